//! The HMAC-SHA256 grant formulas of XEP-0363 external upload (protocols.md §1.2, §1.4).
//!
//! Pure functions: message construction and constant-time verification against one key. No I/O,
//! no logging (a MAC must never reach a log).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `v`: `path + " " + size` (Prosody v1, ejabberd).
pub fn message_v1(path: &str, size: u64) -> Vec<u8> {
    format!("{path} {size}").into_bytes()
}

/// `v2` and `token`: `path + "\0" + size + "\0" + content_type`.
pub fn message_v2(path: &str, size: u64, content_type: &str) -> Vec<u8> {
    format!("{path}\0{size}\0{content_type}").into_bytes()
}

/// `v3` (hmac-file-server): `METHOD + "\n" + expires + "\n" + "/" + path`.
pub fn message_v3(method: &str, expires: u64, path: &str) -> Vec<u8> {
    format!("{method}\n{expires}\n/{path}").into_bytes()
}

/// Lowercase hex HMAC-SHA256 of `message` under `key`.
pub fn sign_hex(key: &[u8], message: &[u8]) -> String {
    // Hmac accepts keys of any length; new_from_slice cannot fail for HMAC.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of a hex MAC (either case) against `message` under `key`.
pub fn verify_hex(key: &[u8], message: &[u8], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(message);
    // `verify_slice` compares in constant time and rejects wrong lengths.
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (secret, message, MAC) from protocols.md §1.2.
    const VECTORS: &[(&str, &[u8], &str)] = &[
        (
            "mysecret",
            b"thomas/abc/catmetal.jpg 23026",
            "7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e",
        ),
        (
            "mysecret",
            b"thomas/abc/catmetal.jpg\x0023026\x00image/jpeg",
            "7318cd44d4c40731e3b2ff869f553ab2326eae631868e7b8054db20d4aee1c06",
        ),
        (
            "secret string",
            b"foo/bar.jpg 1048576",
            "e6df55a04516617d6a86ad6ca23879819591085a1a8c0041f4da06824f5d2db7",
        ),
        (
            "secret string",
            b"foo/bar.jpg\x001048576\x00image/jpeg",
            "a19d27add075aa60035e27c05e794f13079ba48c508852b3d7160a6bec0f85ab",
        ),
        (
            "secret string",
            b"foo/bar.jpg\x001048576\x00application/octet-stream",
            "8cb4befd7abad2898feac2178dc07abf0bfe94590652d5a0c51b5b26e6c78899",
        ),
        (
            "mysecret",
            "4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/très cool.jpg 23456".as_bytes(),
            "6496a8c4a097d1557bc16df99b139b4bc8960c9ee4c55eb4558c14d8f26aab02",
        ),
        (
            "mysecret",
            b"0123456789abcdef0123456789abcdef01234567/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ABCD/my_file.jpg 1048576",
            "17230581cb4f0ba4fcc7b87e5ef273e20d3817b5f044b367457999150c2f9cdd",
        ),
    ];

    #[test]
    fn protocol_test_vectors_sign_and_verify() {
        for (secret, msg, mac) in VECTORS {
            assert_eq!(&sign_hex(secret.as_bytes(), msg), mac, "{secret} {msg:?}");
            assert!(verify_hex(secret.as_bytes(), msg, mac));
            assert!(verify_hex(
                secret.as_bytes(),
                msg,
                &mac.to_ascii_uppercase()
            ));
        }
    }

    #[test]
    fn message_builders_match_vectors() {
        assert_eq!(message_v1("thomas/abc/catmetal.jpg", 23026), VECTORS[0].1);
        assert_eq!(
            message_v2("thomas/abc/catmetal.jpg", 23026, "image/jpeg"),
            VECTORS[1].1
        );
        assert_eq!(
            message_v2("foo/bar.jpg", 1048576, "application/octet-stream"),
            VECTORS[4].1
        );
        assert_eq!(
            message_v1("4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/très cool.jpg", 23456),
            VECTORS[5].1
        );
    }

    #[test]
    fn v3_message_keeps_leading_slash() {
        assert_eq!(
            message_v3("PUT", 1700000000, "a/b.txt"),
            b"PUT\n1700000000\n/a/b.txt"
        );
    }

    #[test]
    fn wrong_mac_wrong_key_and_garbage_fail() {
        let (secret, msg, mac) = VECTORS[0];
        let mut flipped = mac.to_owned();
        flipped.replace_range(0..1, "8");
        assert!(!verify_hex(secret.as_bytes(), msg, &flipped));
        assert!(!verify_hex(b"other", msg, mac));
        assert!(!verify_hex(secret.as_bytes(), msg, "zz"));
        assert!(!verify_hex(secret.as_bytes(), msg, &mac[..62]));
        assert!(!verify_hex(secret.as_bytes(), msg, ""));
    }
}
