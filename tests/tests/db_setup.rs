//! The `db-setup` custom resource (`functions/db-setup`)
//! against moto's Secrets Manager and a real Postgres, as CloudFormation drives it:
//! Create makes the role, its schema and the tables; Update and a second Create change
//! nothing else; Delete keeps everything; every request is answered with one PUT to its
//! ResponseURL (here a listener on loopback), FAILED with a reason that never holds a
//! password.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use txpipe::config::EnvVars;
use txpipe::db_setup::custom_resource::{CustomResourceResponse, ResponseStatus};
use txpipe::db_setup::{DbSetupService, ADMIN_SECRET_VAR, NOT_CREATED_ID};
use txpipe_e2e::*;

const ADMIN: &str = "rds_master";
const ADMIN_PASSWORD: &str = "admin-Password-0123456789";
const APP: &str = "txpipe_app";
const APP_PASSWORD: &str = "app-Password-9876543210abcdef";
const STACK_ID: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/txpipe/1234";

/// A stand-in for the presigned ResponseURL: answers 200 to every PUT and hands over
/// (request line and headers, body).
struct ResponseUrl {
    url: String,
    seen: mpsc::UnboundedReceiver<(String, String)>,
}

impl ResponseUrl {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!(
            "http://127.0.0.1:{}/cloudformation-custom-resource-response?X-Amz-Signature=sig",
            listener.local_addr()?.port()
        );
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 8192];
                let request = loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    bytes.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if bytes.len() >= end + 4 + length {
                        break Some((text[..end].to_string(), text[end + 4..].to_string()));
                    }
                };
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                if let Some(request) = request {
                    let _ = tx.send(request);
                }
            }
        });
        Ok(ResponseUrl { url, seen })
    }

    /// The one PUT a request made.
    async fn answer(&mut self) -> Result<CustomResourceResponse> {
        let (head, body) = tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .context("no answer PUT to the ResponseURL")?
            .context("listener gone")?;
        anyhow::ensure!(
            head.starts_with("PUT /cloudformation-custom-resource-response?X-Amz-Signature=sig "),
            "{head}"
        );
        anyhow::ensure!(
            head.to_ascii_lowercase().contains("\r\ncontent-type: \r\n"),
            "the Content-Type must be empty: {head}"
        );
        anyhow::ensure!(self.seen.try_recv().is_err(), "more than one PUT");
        Ok(serde_json::from_str(&body)?)
    }
}

fn request(kind: &str, url: &str, physical: Option<&str>, properties: Value) -> Value {
    let mut event = json!({
        "RequestType": kind,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:txpipe-db-setup",
        "ResponseURL": url,
        "StackId": STACK_ID,
        "RequestId": format!("{kind}-request"),
        "LogicalResourceId": "DbSetup",
        "ResourceType": "Custom::TxpipeDbSetup",
        "ResourceProperties": properties,
    });
    if let Some(id) = physical {
        event["PhysicalResourceId"] = json!(id);
    }
    event
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(90)
}

#[tokio::test]
async fn db_setup_creates_the_role_and_schema_idempotently_and_always_answers() -> Result<()> {
    let stack = Stack::start(true).await?;
    let pg = stack.local.pg.as_ref().context("postgres")?;
    let superuser = stack.pg_client().await?;
    // Like RDS: a master user that is not a superuser but may create roles, and owns
    // the database it created.
    superuser
        .batch_execute(&format!(
            "CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB PASSWORD '{ADMIN_PASSWORD}'"
        ))
        .await?;
    // Not in a transaction block: a statement of its own.
    superuser
        .batch_execute(&format!("CREATE DATABASE txpipe OWNER {ADMIN}"))
        .await?;
    let secrets = aws_sdk_secretsmanager::Client::new(&stack.local.clients.config);
    let secret = |name: &str, value: Value| {
        let secrets = secrets.clone();
        let name = name.to_string();
        async move {
            anyhow::Ok(
                secrets
                    .create_secret()
                    .name(name)
                    .secret_string(value.to_string())
                    .send()
                    .await?
                    .arn()
                    .context("no ARN")?
                    .to_string(),
            )
        }
    };
    let admin_arn = secret(
        "rds-master",
        json!({"username": ADMIN, "password": ADMIN_PASSWORD}),
    )
    .await?;
    let app_arn = secret("db-app", json!({"username": APP, "password": APP_PASSWORD})).await?;
    let port = pg.port().to_string();
    let env = |admin: Option<&str>| {
        let mut vars = vec![
            ("TXPIPE_PG_SECRET_ARN", app_arn.as_str()),
            ("TXPIPE_PG_HOST", "127.0.0.1"),
            ("TXPIPE_PG_PORT", port.as_str()),
            ("TXPIPE_PG_DBNAME", "txpipe"),
            ("TXPIPE_PG_SSLMODE", "disable"),
        ];
        if let Some(arn) = admin {
            vars.push((ADMIN_SECRET_VAR, arn));
        }
        EnvVars::from_pairs(vars)
    };
    let service = DbSetupService::new(&env(Some(&admin_arn)), secrets.clone());
    let properties = json!({
        "ServiceToken": "arn:x", "AppSecretArn": app_arn, "Database": "txpipe",
        "Schema": "txpipe", "Revision": "1",
    });
    let mut url = ResponseUrl::start().await?;

    // Create: SUCCESS, and the answer PUT is exactly what the handler returned.
    let event = request("Create", &url.url, None, properties.clone());
    let returned = service.handle(&event, soon(), Some("group stream")).await?;
    let sent = url.answer().await?;
    assert_eq!(sent, returned);
    assert_eq!(sent.status, ResponseStatus::Success, "{}", sent.reason);
    assert_eq!(sent.physical_resource_id, "txpipe_app@txpipe");
    assert_eq!(
        (
            sent.stack_id.as_str(),
            sent.request_id.as_str(),
            sent.logical_resource_id.as_str()
        ),
        (STACK_ID, "Create-request", "DbSetup")
    );
    assert_eq!(sent.data["Role"], APP);
    assert!(sent.data["MigrationsApplied"].as_u64().unwrap() > 0);

    // The role: logs in, nothing more; its password stored as a SCRAM verifier only.
    let db = {
        let url = format!("postgres://postgres@127.0.0.1:{}/txpipe", pg.port());
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
    };
    let state = || async {
        let role = db
            .query_one(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolpassword
                 FROM pg_authid WHERE rolname = $1",
                &[&APP],
            )
            .await?;
        let password: String = role.get(6);
        let flags: Vec<bool> = (0..6).map(|i| role.get(i)).collect();
        let owner: String = db
            .query_one(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'txpipe'",
                &[],
            )
            .await?
            .get(0);
        let tables: Vec<(String, String)> = db
            .query(
                "SELECT tablename::text, tableowner::text FROM pg_tables WHERE schemaname IN ('txpipe', 'public') ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let public: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .await?
            .get(0);
        let search_path: Vec<String> = db
            .query_one(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                 WHERE s.setrole = $1::text::regrole AND d.datname = 'txpipe'",
                &[&APP],
            )
            .await?
            .get(0);
        anyhow::Ok((flags, password, owner, tables, public, search_path))
    };
    let (flags, verifier, owner, tables, public, search_path) = state().await?;
    assert_eq!(flags, [true, false, false, false, false, false]);
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(!verifier.contains(APP_PASSWORD));
    assert_eq!(owner, APP);
    assert_eq!(public, 0, "no table in public");
    assert!(tables.iter().any(|(t, _)| t == "schema_migrations"));
    assert!(tables.iter().any(|(t, _)| t == "detections"));
    assert!(tables.iter().all(|(_, o)| o == APP), "{tables:?}");
    assert_eq!(search_path, ["search_path=txpipe"]);

    // Update, and a Create again: SUCCESS, same id, no migration left to apply, the
    // same role and tables (the password is set again: a new salt).
    for (kind, physical) in [("Update", Some("txpipe_app@txpipe")), ("Create", None)] {
        let event = request(kind, &url.url, physical, properties.clone());
        service.handle(&event, soon(), None).await?;
        let sent = url.answer().await?;
        assert_eq!(
            sent.status,
            ResponseStatus::Success,
            "{kind}: {}",
            sent.reason
        );
        assert_eq!(sent.physical_resource_id, "txpipe_app@txpipe");
        assert_eq!(sent.data["MigrationsApplied"], 0, "{kind}");
        let (flags2, verifier2, owner2, tables2, public2, path2) = state().await?;
        assert_eq!(
            (&flags2, &owner2, &tables2, public2, &path2),
            (&flags, &owner, &tables, public, &search_path),
            "{kind}"
        );
        assert!(verifier2.starts_with("SCRAM-SHA-256$") && verifier2 != verifier);
    }

    // Delete: SUCCESS, and everything stays.
    let event = request(
        "Delete",
        &url.url,
        Some("txpipe_app@txpipe"),
        properties.clone(),
    );
    service.handle(&event, soon(), None).await?;
    let sent = url.answer().await?;
    assert_eq!(sent.status, ResponseStatus::Success);
    assert_eq!(sent.physical_resource_id, "txpipe_app@txpipe");
    assert_eq!(state().await?.3, tables);

    // Failures are answered FAILED, with the reason and where the log is, never a
    // password. A database other than the one connected to:
    let mut wrong_db = properties.clone();
    wrong_db["Database"] = json!("other");
    let event = request("Create", &url.url, None, wrong_db);
    service
        .handle(
            &event,
            soon(),
            Some("/aws/lambda/x 2024/01/01/[$LATEST]abc"),
        )
        .await?;
    let sent = url.answer().await?;
    assert_eq!(sent.status, ResponseStatus::Failed);
    assert_eq!(sent.physical_resource_id, NOT_CREATED_ID);
    assert!(sent.reason.contains("TXPIPE_PG_DBNAME"), "{}", sent.reason);
    assert!(
        sent.reason.contains("(log: /aws/lambda/x"),
        "{}",
        sent.reason
    );
    // A function without the admin secret; an admin that may not create roles; a
    // secret that does not exist.
    superuser
        .batch_execute("CREATE ROLE weak LOGIN PASSWORD 'weak-password-123'")
        .await?;
    let weak_arn = secret(
        "weak",
        json!({"username": "weak", "password": "weak-password-123"}),
    )
    .await?;
    let missing_arn = app_arn.replace("db-app", "gone");
    for (admin, expect) in [
        (None, ADMIN_SECRET_VAR),
        (Some(weak_arn.as_str()), "SQLSTATE 42501"),
        (Some(missing_arn.as_str()), "Secrets Manager"),
    ] {
        let service = DbSetupService::new(&env(admin), secrets.clone());
        let event = request(
            "Update",
            &url.url,
            Some("txpipe_app@txpipe"),
            properties.clone(),
        );
        service.handle(&event, soon(), None).await?;
        let sent = url.answer().await?;
        assert_eq!(sent.status, ResponseStatus::Failed, "{expect}");
        assert_eq!(sent.physical_resource_id, "txpipe_app@txpipe");
        assert!(sent.reason.contains(expect), "{expect}: {}", sent.reason);
        for secret in [ADMIN_PASSWORD, APP_PASSWORD, "weak-password-123"] {
            assert!(!sent.reason.contains(secret), "{}", sent.reason);
        }
    }
    // The failed attempts changed nothing.
    assert_eq!(state().await?.3, tables);

    // Not a custom resource request: nothing to answer, an error for Lambda.
    assert!(service
        .handle(&json!({"Records": []}), soon(), None)
        .await
        .is_err());
    Ok(())
}
