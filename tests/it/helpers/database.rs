//! A fresh database per test, cloned from a template that is migrated once per test process.

use std::sync::OnceLock;

use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use pg_cluster::PgCluster;
use tokio::sync::Mutex;
use uuid::Uuid;

/// The PostgreSQL server the tests use: `DATABASE_URL`'s, or a private one for this process.
struct Server {
    /// URL without the database name, for example `postgres://postgres@127.0.0.1:5432` or, for
    /// the private cluster, `postgres://postgres@%2Ftmp%2F…%2Fdata:port`.
    base_url: String,
    _cluster: Option<PgCluster>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
/// Name of the migrated template; looked up or created on first use.
static TEMPLATE: Mutex<Option<String>> = Mutex::const_new(None);

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) => Server {
            base_url: strip_database(&url),
            _cluster: None,
        },
        Err(_) => {
            let cluster = PgCluster::start_ephemeral()
                .unwrap_or_else(|error| panic!("cannot start a private PostgreSQL: {error}"));
            Server {
                base_url: strip_database(&cluster.url("postgres")),
                _cluster: Some(cluster),
            }
        }
    })
}

fn strip_database(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    match without_query.rsplit_once('/') {
        Some((base, _database)) if base.contains("://") && !base.ends_with('/') => base.to_owned(),
        _ => without_query.trim_end_matches('/').to_owned(),
    }
}

async fn admin_connection() -> AsyncPgConnection {
    let url = format!("{}/postgres", server().base_url);
    AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// A database that exists for one test and is dropped with it.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Clones the migrated template into a new database.
    pub async fn create() -> Self {
        let mut template = TEMPLATE.lock().await;
        if template.is_none() {
            *template = Some(create_template().await);
        }
        let template_name = template.as_deref().expect("template was just created");
        let name = format!("switchbord_test_{}", Uuid::new_v4().simple());
        let mut admin = admin_connection().await;
        // Cloning is serialised by the template lock: PostgreSQL refuses to copy a template
        // that another session is reading.
        sql_query(format!(
            "CREATE DATABASE {name} TEMPLATE {template_name} STRATEGY FILE_COPY"
        ))
        .execute(&mut admin)
        .await
        .expect("clone the template database");
        drop(template);
        let url = format!("{}/{name}", server().base_url);
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes the database refuse new connections and ends the open ones (as if its server
    /// went away), or accept connections again.
    pub async fn set_reachable(&self, reachable: bool) {
        let mut admin = admin_connection().await;
        sql_query(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("change ALLOW_CONNECTIONS");
        if !reachable {
            self.end_connections().await;
        }
    }

    /// Ends every connection to this database, as a server restart does, and returns once
    /// those backends are gone; the database stays reachable (new connections may open).
    pub async fn end_connections(&self) {
        #[derive(diesel::QueryableByName)]
        struct Backend {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let mut admin = admin_connection().await;
        // Listed first, ended second: in one query PostgreSQL may call pg_terminate_backend
        // before filtering by database, ending unrelated connections (this one included).
        let backends: Vec<Backend> = sql_query(format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
        .load(&mut admin)
        .await
        .expect("list the database's connections");
        let pids = backends
            .iter()
            .map(|backend| backend.pid.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if pids.is_empty() {
            return;
        }
        sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM unnest(ARRAY[{pids}]) AS pid"
        ))
        .execute(&mut admin)
        .await
        .expect("end the database's connections");
        crate::helpers::eventually("the ended backends exit", async || {
            sql_query(format!(
                "SELECT 1 FROM pg_stat_activity WHERE pid IN ({pids})"
            ))
            .execute(&mut admin)
            .await
            .expect("list the database's connections")
                == 0
        })
        .await;
    }

    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// A connection that listens on `channel`, for a test to read its notifications
    /// (`notifications_stream`).
    pub async fn listen(&self, channel: &str) -> AsyncPgConnection {
        let mut listener = self.connect().await;
        sql_query(format!("LISTEN {channel}"))
            .execute(&mut listener)
            .await
            .expect("listen");
        listener
    }

    /// From now on, notes how each outbox job is inserted: already running (started at once)
    /// or pending (queued), for [`TestDatabase::jobs_inserted`].
    pub async fn watch_job_inserts(&self) {
        use diesel_async::SimpleAsyncConnection;
        self.connect()
            .await
            .batch_execute(
                "CREATE TABLE inserted_jobs (kind text, status text);
                 CREATE FUNCTION note_inserted_job() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO inserted_jobs VALUES (NEW.kind, NEW.status); RETURN NEW; END $$;
                 CREATE TRIGGER note_inserted_job AFTER INSERT ON outbox_jobs
                     FOR EACH ROW EXECUTE FUNCTION note_inserted_job();",
            )
            .await
            .expect("watch job inserts");
    }

    /// Jobs of `kind` inserted with `status` since [`TestDatabase::watch_job_inserts`].
    pub async fn jobs_inserted(&self, kind: &str, status: &str) -> i64 {
        super::count(
            self,
            &format!(
                "SELECT count(*) FROM inserted_jobs WHERE kind = '{kind}' AND status = '{status}'"
            ),
        )
        .await
    }
}

/// The template is named after the migrations it holds, so it is migrated once per schema
/// version and shared by every test process (even parallel ones) on the same server.
async fn create_template() -> String {
    let name = format!("switchbord_template_{:016x}", migrations_fingerprint());
    let mut admin = admin_connection().await;
    sql_query("SELECT pg_advisory_lock(7262531700)")
        .execute(&mut admin)
        .await
        .expect("take the template lock");
    let exists: Vec<DatabaseName> = sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname = '{name}'"
    ))
    .load(&mut admin)
    .await
    .expect("look for the template database");
    if exists.is_empty() {
        // Built under a temporary name and renamed when complete, so that a crash half-way
        // never leaves a broken template behind.
        let building = format!("{name}_building_{}", Uuid::new_v4().simple());
        sql_query(format!("CREATE DATABASE {building}"))
            .execute(&mut admin)
            .await
            .expect("create the template database");
        let url = format!("{}/{building}", server().base_url);
        switchbord_core::db::run_migrations(&url)
            .await
            .expect("migrate the template database");
        sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
            .execute(&mut admin)
            .await
            .expect("publish the template database");
    }
    sql_query("SELECT pg_advisory_unlock(7262531700)")
        .execute(&mut admin)
        .await
        .expect("release the template lock");
    name
}

#[derive(diesel::QueryableByName)]
struct DatabaseName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[allow(dead_code)]
    datname: String,
}

/// FNV-1a over every migration file, in name order.
fn migrations_fingerprint() -> u64 {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = walk(&root);
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let bytes = std::fs::read(&file).expect("read a migration file");
        for byte in file.to_string_lossy().bytes().chain(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("read the migrations directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread with
        // a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for dropping a test database");
            runtime.block_on(async move {
                let mut admin = admin_connection().await;
                sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}
