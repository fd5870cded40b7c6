//! Against a real server: `SLUICE_TEST_POSTGRES_URL` (see `tests/services/postgres.sh`)
//! names a role that may create databases; each test makes its own and drops it after.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use super::*;
use crate::catalog::contract;
use crate::config::CatalogConfig;
use tokio_postgres::NoTls;

mod totals;

const ENV: &str = "SLUICE_TEST_POSTGRES_URL";
/// Bound on every wait for the removal feed.
const FEED_WAIT: Duration = Duration::from_secs(10);

/// A database of this test's own, dropped at the end.
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

fn try_admin_run(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(conn);
        let out = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        out
    })
}

fn admin_run(url: &str, sql: &str) {
    try_admin_run(url, sql).unwrap();
}

/// `url` with its database name replaced.
fn with_db(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{authority}/{name}?{q}"),
        None => format!("{authority}/{name}"),
    }
}

impl TestDb {
    /// `None` (and a line saying so) when no server is configured.
    fn new(tag: &str) -> Option<TestDb> {
        let Ok(admin) = std::env::var(ENV) else {
            eprintln!("skipped: {ENV} unset");
            return None;
        };
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sluice_t_{tag}_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            getrandom::u64().unwrap() % 1_000_000
        );
        // A collation that is not byte order where the server has ICU (PostgreSQL 15+),
        // so the schema's own collation is what the contract's ordering checks see.
        let icu = format!(
            "CREATE DATABASE {name} ENCODING 'UTF8' LOCALE_PROVIDER icu \
             ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0"
        );
        if try_admin_run(&admin, &icu).is_err() {
            admin_run(&admin, &format!("CREATE DATABASE {name}"));
        }
        let url = with_db(&admin, &name);
        Some(TestDb { admin, name, url })
    }

    fn config(&self) -> CatalogConfig {
        CatalogConfig {
            url: self.url.clone(),
            pool_size: 4,
            ..CatalogConfig::default()
        }
    }

    fn node(&self) -> PgCatalog {
        PgCatalog::connect(&self.config()).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_run(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[test]
fn with_db_replaces_only_the_database_name() {
    assert_eq!(
        with_db("postgres://u:p@h:5/db?sslmode=disable", "x"),
        "postgres://u:p@h:5/x?sslmode=disable"
    );
    assert_eq!(with_db("postgres://h", "x"), "postgres://h/x");
}

#[test]
fn postgres_passes_the_catalog_contract() {
    let Some(t) = TestDb::new("contract") else {
        return;
    };
    contract::run(&t.node());
}

#[test]
fn nodes_starting_together_migrate_once() {
    let Some(t) = TestDb::new("migrate") else {
        return;
    };
    let cfg = t.config();
    let go = Arc::new(Barrier::new(4));
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let (cfg, go) = (cfg.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                PgCatalog::connect(&cfg).map(|_| ())
            })
        })
        .collect();
    for n in nodes {
        n.join().unwrap().unwrap();
    }
    // A restart finds the schema current and keeps the rows.
    let a = t.node();
    a.insert(contract::row("m/1", 1, 1, None, None)).unwrap();
    drop(a);
    assert!(t.node().get("m/1").unwrap().is_some());
}

/// Run `f(node, i)` on `n` threads at once, alternating between the two nodes.
fn race<T: Send + 'static>(
    nodes: &[Arc<PgCatalog>; 2],
    n: usize,
    f: impl Fn(&PgCatalog, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let go = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (node, go, f) = (nodes[i % 2].clone(), go.clone(), f.clone());
            std::thread::spawn(move || {
                go.wait();
                f(&node, i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn two_nodes(t: &TestDb) -> [Arc<PgCatalog>; 2] {
    [Arc::new(t.node()), Arc::new(t.node())]
}

#[test]
fn nodes_racing_one_path_publish_it_once() {
    let Some(t) = TestDb::new("insert") else {
        return;
    };
    let nodes = two_nodes(&t);
    let results = race(&nodes, 50, |c, i| {
        c.insert(contract::row("race/one", i as u64, 1, None, None))
    });
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(()) | Err(CatalogError::Exists))));
    // Once expired, the path is free again, once.
    nodes[0]
        .delete("race/one", DeleteReason::Expired, 10)
        .unwrap()
        .unwrap();
    let again = race(&nodes, 20, |c, _| {
        c.insert(contract::row("race/one", 1, 11, None, None))
    });
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1);
    // Taken down while others insert: never both a live row and a takedown.
    let mixed = race(&nodes, 20, |c, i| {
        if i == 7 {
            c.delete("race/two", DeleteReason::Admin, 12).map(|_| ())
        } else {
            c.insert(contract::row("race/two", 1, 12, None, None))
        }
    });
    let e = nodes[1].get("race/two").unwrap().unwrap();
    assert_eq!(
        e.deleted.map(|d| d.0),
        Some(DeleteReason::Admin),
        "{mixed:?}"
    );
    assert!(matches!(
        nodes[0].insert(contract::row("race/two", 1, 13, None, None)),
        Err(CatalogError::TakenDown)
    ));
}

#[test]
fn claims_racing_from_two_nodes_stay_within_the_limits() {
    let Some(t) = TestDb::new("claims") else {
        return;
    };
    let nodes = two_nodes(&t);
    let limits = ClaimLimits {
        total: Some(100),
        per_uploader: Some(30),
    };
    // A few rounds: an interleaving that breaks the limits shows up in one of them.
    for round in 0..4 {
        let results = race(&nodes, 40, move |c, i| {
            let uploader = (i % 4 < 2).then(|| "u@x".to_owned());
            let claim = Claim {
                id: format!("r{round}c{i}"),
                uploader: uploader.clone(),
                bytes: 10,
                until: 2_000,
            };
            (uploader, c.claim(&claim, limits, 1_000).unwrap())
        });
        let granted = |who: Option<&str>| {
            results
                .iter()
                .filter(|(u, o)| {
                    *o == ClaimOutcome::Granted && (who.is_none() || u.as_deref() == who)
                })
                .count()
        };
        // Twenty claims without an uploader are enough to fill the total exactly.
        assert_eq!(granted(None), 10, "{results:?}");
        assert!(granted(Some("u@x")) <= 3, "{results:?}");
        for (_, o) in &results {
            match *o {
                ClaimOutcome::Granted => {}
                ClaimOutcome::OverTotal { used } => assert!(used + 10 > 100 && used <= 100),
                ClaimOutcome::OverUploader { used } => assert!(used + 10 > 30 && used <= 30),
            }
        }
        for i in 0..40 {
            nodes[i % 2]
                .release_claim(&format!("r{round}c{i}"))
                .unwrap();
        }
    }
}

#[test]
fn leases_and_sequences_hold_across_nodes() {
    let Some(t) = TestDb::new("leases") else {
        return;
    };
    let nodes = two_nodes(&t);
    // One of many racing holders gets a free lease.
    let first = race(&nodes, 20, |c, i| {
        c.lease("w/1", &format!("h{i}"), 1_000, 500, false).unwrap()
    });
    let winners: Vec<_> = first.iter().flatten().collect();
    assert_eq!(winners.len(), 1, "{first:?}");
    let t1 = *winners[0];
    // Racing steals each get their own, larger token; the last one holds the lease.
    let steals: Vec<u64> = race(&nodes, 10, |c, i| {
        c.lease("w/1", &format!("s{i}"), 1_100, 500, true)
            .unwrap()
            .unwrap()
    });
    let mut sorted = steals.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 10);
    assert!(sorted[0] > t1);
    let top = *sorted.last().unwrap();
    let holder = format!("s{}", steals.iter().position(|&s| s == top).unwrap());
    // The holder renews through the other node, keeping its token; stale releases from
    // either node leave it be.
    assert_eq!(
        nodes[1].lease("w/1", &holder, 1_200, 500, false).unwrap(),
        Some(top)
    );
    nodes[0].lease_release("w/1", t1).unwrap();
    nodes[1].lease_release("w/1", sorted[0]).unwrap();
    assert_eq!(nodes[0].lease("w/1", "x", 1_300, 500, false).unwrap(), None);
    // Expired: taken over from the other node with a larger token; released, the same.
    let t2 = nodes[0]
        .lease("w/1", "x", 1_700, 500, false)
        .unwrap()
        .unwrap();
    assert!(t2 > top);
    nodes[1].lease_release("w/1", t2).unwrap();
    let t3 = nodes[1]
        .lease("w/1", "y", 1_701, 500, false)
        .unwrap()
        .unwrap();
    assert!(t3 > t2);
    // A released lease raced for by many: one winner, above every earlier token.
    nodes[0].lease_release("w/1", t3).unwrap();
    let after = race(&nodes, 20, |c, i| {
        c.lease("w/1", &format!("r{i}"), 1_800, 500, false).unwrap()
    });
    let won: Vec<_> = after.iter().flatten().collect();
    assert_eq!(won.len(), 1, "{after:?}");
    assert!(*won[0] > t3);
    // Sequence numbers drawn from both nodes at once: 1..=200, each once.
    let mut drawn: Vec<u64> = race(&nodes, 8, |c, _| {
        (0..25)
            .map(|_| c.next_seq("parts/1").unwrap())
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    drawn.sort_unstable();
    assert_eq!(drawn, (1..=200).collect::<Vec<_>>());
}

#[test]
fn removals_on_one_node_reach_the_watchers_of_another() {
    let Some(t) = TestDb::new("feed") else {
        return;
    };
    let (a, b) = (t.node(), t.node());
    let w1 = b.watch_removed().unwrap();
    let w2 = b.watch_removed().unwrap();
    a.insert(contract::row("feed/x", 1, 1, None, None)).unwrap();
    a.delete("feed/x", DeleteReason::Admin, 2).unwrap();
    assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/x");
    assert_eq!(w2.recv_timeout(FEED_WAIT).unwrap(), "feed/x");
    // Expiry of a live row, and a takedown of a path never stored.
    a.insert(contract::row("feed/y", 1, 1, None, Some(5)))
        .unwrap();
    a.delete("feed/y", DeleteReason::Expired, 6).unwrap();
    a.delete("feed/z", DeleteReason::Erasure, 7).unwrap();
    assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/y");
    assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/z");
    // A watcher that hung up does not stop the others.
    drop(w2);
    a.insert(contract::row("feed/w", 1, 1, None, None)).unwrap();
    a.delete("feed/w", DeleteReason::Removed, 8).unwrap();
    assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/w");
}

#[test]
fn the_feed_reconnects_after_losing_its_connection() {
    let Some(t) = TestDb::new("reconnect") else {
        return;
    };
    let (a, b) = (t.node(), t.node());
    let w = b.watch_removed().unwrap();
    // Cut the feed's connection, as a server restart or a network fault would.
    admin_run(
        &t.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND query LIKE 'LISTEN%'",
            t.name
        ),
    );
    // Removals go on until one arrives: those made while the feed reconnects are lost.
    let deadline = std::time::Instant::now() + FEED_WAIT;
    let mut n = 0;
    let got = loop {
        assert!(std::time::Instant::now() < deadline, "feed never came back");
        n += 1;
        let path = format!("rc/{n}");
        a.delete(&path, DeleteReason::Admin, 1).unwrap();
        if let Ok(p) = w.recv_timeout(Duration::from_millis(200)) {
            break p;
        }
    };
    assert!(got.starts_with("rc/"));
}

#[test]
fn calls_work_from_any_thread_and_drop_anywhere() {
    let Some(t) = TestDb::new("threads") else {
        return;
    };
    // A plain thread, no runtime.
    let c = Arc::new(t.node());
    c.set_flag("f", "1").unwrap();
    // The blocking pool of another runtime, and even (blocking it) an async thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let c2 = c.clone();
    rt.block_on(async move {
        let c3 = c2.clone();
        let v = tokio::task::spawn_blocking(move || c3.get_flag("f").unwrap())
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("1"));
        assert_eq!(c2.get_flag("f").unwrap().as_deref(), Some("1"));
        // The last handle dropped on an async thread: the catalog's runtime stops
        // without blocking, no panic.
        drop(c2);
    });
    drop(c);
    rt.block_on(async {
        let fresh = tokio::task::spawn_blocking({
            let cfg = t.config();
            move || PgCatalog::connect(&cfg).unwrap()
        })
        .await
        .unwrap();
        drop(fresh);
    });
}

#[test]
// The test writes the password file that `connect` reads.
#[allow(clippy::disallowed_methods)]
fn passwords_come_from_a_file_or_the_environment_and_are_never_shown() {
    let Some(t) = TestDb::new("password") else {
        return;
    };
    let pg: tokio_postgres::Config = t.url.parse().unwrap();
    let Some(password) = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
    else {
        eprintln!("skipped: {ENV} has no password");
        return;
    };
    let bare = t.url.replacen(&format!(":{password}@"), "@", 1);
    assert_ne!(bare, t.url);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let cfg = CatalogConfig {
        url: bare.clone(),
        password_file: Some(file.clone()),
        ..t.config()
    };
    PgCatalog::connect(&cfg)
        .unwrap()
        .set_flag("pw", "file")
        .unwrap();
    let var = format!("SLUICE_TEST_PG_PASSWORD_{}", std::process::id());
    std::env::set_var(&var, &password);
    let cfg = CatalogConfig {
        url: bare.clone(),
        password_env: Some(var),
        ..t.config()
    };
    PgCatalog::connect(&cfg).unwrap();
    // A wrong password fails, and the error shows neither password.
    let wrong = "not-the-password-1234";
    std::fs::write(&file, wrong).unwrap();
    let cfg = CatalogConfig {
        url: bare,
        password_file: Some(file),
        ..t.config()
    };
    let e = PgCatalog::connect(&cfg).err().unwrap().to_string();
    assert!(!e.contains(wrong) && !e.contains(&password), "{e}");
    // Nor does a URL that does not parse.
    let e = PgCatalog::connect(&CatalogConfig {
        url: format!("{}?port=not-a-port", t.url),
        ..t.config()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(!e.contains(&password), "{e}");
}
