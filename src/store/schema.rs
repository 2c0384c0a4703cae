//! Opening the database: WAL, `synchronous=FULL`, migrations by `user_version`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// Each entry migrates from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE executions (
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        key TEXT UNIQUE,
        code TEXT NOT NULL,
        notebook TEXT,
        cell_id TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        outputs TEXT NOT NULL DEFAULT '[]',
        execution_count INTEGER,
        error TEXT,
        timeout_s REAL,
        msg_id TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        last_seq INTEGER
    );
    CREATE INDEX executions_by_state ON executions(state, n);
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 1 -> 2: assets held by hand, never deleted while pinned
    "CREATE TABLE asset_pins (name TEXT PRIMARY KEY, pinned_at TEXT NOT NULL);",
    // 2 -> 3: what an output limit left out of an execution (JSON `Truncation`)
    "ALTER TABLE executions ADD COLUMN truncated TEXT;",
    // 3 -> 4: the request of a Jupyter client (JSON `ClientRequest`)
    "ALTER TABLE executions ADD COLUMN client_request TEXT;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn db_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("sidecar.db")
}

/// Opens the write connection, migrating the schema; refuses a newer schema
/// and any journal mode but WAL.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotWal(mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&conn)?;
    Ok(conn)
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "migrated the database schema");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nbo-schema-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.db")
    }

    #[test]
    fn opens_in_wal_at_the_current_version() {
        let path = temp_db("wal");
        let conn = open_writer(&path).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        drop(conn);
        // Opening again is a no-op migration.
        open_writer(&path).unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let path = temp_db("newer");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open_writer(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer"));
    }
}
