//! The detector's own database role (`txpipe_app`): `infra/db/app-role.sql`, with its
//! placeholders filled in, run by an admin (the RDS master user) in the pipeline's
//! database. The same file is rendered by `infra/db/app_role.py` for
//! `DatabaseMode=existing`; here it is built into the binary for the `db-setup`
//! custom resource ([`super::DbSetupService`]).
//!
//! The role's password never appears in a statement: the SQL carries its SCRAM-SHA-256
//! verifier, which is what Postgres stores anyway.

use crate::postgres::PgError;
use tokio_postgres::Client;

/// `infra/db/app-role.sql`, with `{{role}}`, `{{role_literal}}`, `{{verifier}}` and
/// `{{database}}` placeholders.
pub const APP_ROLE_SQL: &str = include_str!("../../../../infra/db/app-role.sql");

/// The schema the role owns and the detector's tables live in (fixed by the SQL).
pub const APP_SCHEMA: &str = "txpipe";

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a standard SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SCRAM-SHA-256 verifier Postgres stores for `password` (random salt, 4096
/// iterations): `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// The SQL that creates or updates `role` with the given verifier in `database`.
pub fn render(role: &str, verifier: &str, database: &str) -> Result<String, PgError> {
    if role.is_empty() || role.len() > 63 || role.contains('\0') {
        return Err(PgError::Settings(format!(
            "the application role name must be 1 to 63 bytes without NUL, not {role:?}"
        )));
    }
    if !verifier.starts_with("SCRAM-SHA-256$") {
        return Err(PgError::Settings(
            "the application role's password must be given as a SCRAM-SHA-256 verifier".into(),
        ));
    }
    // {{role_literal}} before {{role}}: the longer placeholder first.
    let sql = APP_ROLE_SQL
        .replace("{{role_literal}}", &quote_literal(role))
        .replace("{{role}}", &quote_ident(role))
        .replace("{{verifier}}", &quote_literal(verifier))
        .replace("{{database}}", &quote_ident(database));
    if sql.contains("{{") {
        return Err(PgError::Settings(
            "infra/db/app-role.sql has a placeholder this binary does not fill in".into(),
        ));
    }
    Ok(sql)
}

/// Creates or updates the role in the database `admin` is connected to (idempotent):
/// login with the verifier's password, owner of schema `txpipe` and nothing more. When
/// `expected_database` is given, the connection must be to that database. Returns the
/// database's name.
pub async fn apply(
    admin: &Client,
    role: &str,
    verifier: &str,
    expected_database: Option<&str>,
) -> Result<String, PgError> {
    let database: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(PgError::db("reading the current database"))?
        .get(0);
    if let Some(want) = expected_database.filter(|d| *d != database) {
        return Err(PgError::Settings(format!(
            "connected to database {database:?} but the setup is for {want:?}: set TXPIPE_PG_DBNAME to {want:?}"
        )));
    }
    let sql = render(role, verifier, &database)?;
    admin
        .batch_execute(&sql)
        .await
        .map_err(PgError::db(format!(
            "creating role {role} and schema {APP_SCHEMA} in database {database} (infra/db/app-role.sql)"
        )))?;
    Ok(database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("txpipe_app"), "\"txpipe_app\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn verifier_is_scram_and_never_the_password() {
        let password = "correct horse battery staple";
        let v = scram_verifier(password);
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains(password));
        // A random salt: two verifiers of one password differ.
        assert_ne!(v, scram_verifier(password));
    }

    #[test]
    fn render_fills_every_placeholder() {
        let v = scram_verifier("pw");
        let sql = render("txpipe_app", &v, "txpipe").unwrap();
        assert!(!sql.contains("{{"));
        assert!(sql.contains("CREATE ROLE \"txpipe_app\""));
        assert!(sql.contains("rolname = 'txpipe_app'"));
        assert!(sql.contains(&format!("PASSWORD '{v}'")));
        assert!(sql.contains("ON DATABASE \"txpipe\""));
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS txpipe AUTHORIZATION \"txpipe_app\""));
        // Names that need quoting stay one identifier / one literal.
        let odd = render("odd\"role'", &v, "db\"x").unwrap();
        assert!(odd.contains("CREATE ROLE \"odd\"\"role'\""));
        assert!(odd.contains("rolname = 'odd\"role'''"));
        assert!(odd.contains("ON DATABASE \"db\"\"x\""));
        assert!(render("", &v, "d").is_err());
        assert!(render(&"r".repeat(64), &v, "d").is_err());
        assert!(render("r", "clear password", "d").is_err());
    }
}
