//! Unix-socket listeners for a reverse proxy on the same machine: the socket file gets the
//! configured mode and group, and a stale socket left by an earlier run is replaced (a live
//! one, answered by another process, is an error).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::UnixListener;

/// Bind `path`, then set its mode (e.g. 0o660) and, when given, its group (by name).
// A listening socket's file (stale one replaced, mode set), not stored data.
#[allow(clippy::disallowed_methods)]
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(name) = group {
        let g = nix::unistd::Group::from_name(name)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other(format!("no group named {name}")))?;
        nix::unistd::chown(path, None, Some(g.gid)).map_err(std::io::Error::other)?;
    }
    Ok(listener)
}
