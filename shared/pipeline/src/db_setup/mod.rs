//! The `db-setup` custom resource (`Custom::TxpipeDbSetup` in `infra/template.yaml`),
//! the stack's third function (`functions/db-setup`), invoked by CloudFormation on
//! stack create, update and delete.
//!
//! On Create and Update it reads the RDS master secret (`TXPIPE_PG_ADMIN_SECRET_ARN`)
//! and the application role's secret (`TXPIPE_PG_SECRET_ARN`), connects as the master
//! user (`TXPIPE_PG_HOST`/`PORT`/`DBNAME`, TLS per `TXPIPE_PG_SSLMODE`), runs
//! `infra/db/app-role.sql` ([`app_role`]) with the role's SCRAM verifier, then
//! connects as the role itself — proving its password works — and runs the migrations,
//! so the tables exist, owned by the role in schema `txpipe`, before the first chunk.
//! On Delete it leaves the database alone (its data is retained).
//!
//! Whatever happens it answers CloudFormation (SUCCESS, or FAILED with the reason),
//! before the invocation's deadline. Neither a password nor the verifier ever reaches
//! a log line or the reason.

pub mod app_role;
pub mod custom_resource;

use crate::config::{ConfigError, EnvVars};
use crate::postgres::{migrate, read_secret, PgError, PgSettings, SecretCredentials};
use crate::store::Retry;
use app_role::APP_SCHEMA;
use custom_resource::{
    redact, CustomResourceRequest, CustomResourceResponse, RequestType, Responder, ResponseError,
    ResponseStatus,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The environment variable naming the admin (RDS master) secret.
pub const ADMIN_SECRET_VAR: &str = "TXPIPE_PG_ADMIN_SECRET_ARN";
/// Time kept back from the invocation's deadline to answer CloudFormation.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(15);
/// The id answered when the role's name is not known (a failed Create).
pub const NOT_CREATED_ID: &str = "txpipe-db-setup-not-created";

/// The custom resource could not be set up, or its answer not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    /// The function's environment is incomplete.
    #[error("db-setup settings: {0}")]
    Config(String),
    /// The event is not a custom resource request.
    #[error("not a CloudFormation custom resource request ({0})")]
    Event(String),
    /// The resource's properties ask for something this setup does not do.
    #[error("{0}")]
    Properties(String),
    /// Secrets Manager or Postgres.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The work did not finish before the invocation's deadline.
    #[error("not finished {} s before the invocation's deadline (during: {})", ANSWER_MARGIN.as_secs(), .0)]
    Timeout(&'static str),
    /// CloudFormation could not be answered.
    #[error(transparent)]
    Response(#[from] ResponseError),
}

impl From<ConfigError> for DbSetupError {
    fn from(e: ConfigError) -> Self {
        DbSetupError::Config(e.to_string())
    }
}

/// Where the database is and which secrets to read.
#[derive(Debug, Clone)]
struct Settings {
    /// Host, port, database, TLS; the application role's secret.
    pg: PgSettings,
    /// The admin's secret.
    admin_secret_arn: String,
    /// The application role's secret.
    app_secret_arn: String,
}

impl Settings {
    fn from_vars(env: &EnvVars) -> Result<Self, DbSetupError> {
        let admin_secret_arn = env.required(
            ADMIN_SECRET_VAR,
            "the admin (RDS master) secret the setup connects with",
        )?;
        let app_secret_arn = env.required(
            "TXPIPE_PG_SECRET_ARN",
            "the application role's secret (username and password)",
        )?;
        let pg = PgSettings::from_vars(env)?.ok_or(ConfigError::Missing {
            var: "TXPIPE_PG_SECRET_ARN",
            what: "the application role's secret",
        })?;
        Ok(Settings {
            pg,
            admin_secret_arn,
            app_secret_arn,
        })
    }
}

/// What a successful Create or Update made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The role.
    pub role: String,
    /// The database.
    pub database: String,
    /// Migrations applied by this run (empty when the schema was current).
    pub migrations_applied: Vec<i32>,
}

impl Provisioned {
    /// `<role>@<database>`, the resource's physical id.
    pub fn physical_id(&self) -> String {
        format!("{}@{}", self.role, self.database)
    }
}

/// The `db-setup` handler, built once per container.
pub struct DbSetupService {
    settings: Result<Settings, String>,
    secrets: aws_sdk_secretsmanager::Client,
    responder: Responder,
}

impl DbSetupService {
    /// From the process environment and the standard AWS configuration. A bad
    /// environment is not fatal here: every request is then answered FAILED with the
    /// reason (a function that cannot start would hold the stack until its timeout).
    pub async fn from_env() -> Self {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::new(
            &EnvVars::from_env(),
            aws_sdk_secretsmanager::Client::new(&config),
        )
    }

    /// From explicit variables and a Secrets Manager client.
    pub fn new(env: &EnvVars, secrets: aws_sdk_secretsmanager::Client) -> Self {
        let settings = Settings::from_vars(env).map_err(|e| e.to_string());
        if let Err(e) = &settings {
            tracing::error!(error = %e, "db-setup: the function's environment is incomplete");
        }
        DbSetupService {
            settings,
            secrets,
            responder: Responder::new(),
        }
    }

    /// Handles one request and answers CloudFormation. `log` names where this
    /// invocation logs (added to a FAILED reason). Returns the answer sent; an error
    /// only when the event is not a custom resource request or the answer could not
    /// be delivered (Lambda then retries the event).
    pub async fn handle(
        &self,
        event: &Value,
        deadline: Instant,
        log: Option<&str>,
    ) -> Result<CustomResourceResponse, DbSetupError> {
        let request: CustomResourceRequest = serde_json::from_value(event.clone())
            .map_err(|e| DbSetupError::Event(e.to_string()))?;
        tracing::info!(
            request_type = ?request.request_type,
            stack = %request.stack_id,
            resource = %request.logical_resource_id,
            physical_id = ?request.physical_resource_id,
            "db-setup: custom resource request"
        );
        let work_until = deadline
            .checked_sub(ANSWER_MARGIN)
            .unwrap_or(deadline)
            .max(Instant::now());
        let mut sensitive = Vec::new();
        let outcome = match request.request_type {
            RequestType::Delete => Ok(None),
            RequestType::Create | RequestType::Update => {
                let mut during = "starting";
                let result = tokio::time::timeout_at(
                    work_until.into(),
                    self.provision(&request, work_until, &mut sensitive, &mut during),
                )
                .await;
                match result {
                    Ok(result) => result.map(Some),
                    Err(_) => Err(DbSetupError::Timeout(during)),
                }
            }
        };
        let fallback_id = request
            .physical_resource_id
            .clone()
            .unwrap_or_else(|| NOT_CREATED_ID.to_string());
        let response = match outcome {
            Ok(None) => {
                tracing::info!("db-setup: Delete - the database, role and data are kept");
                CustomResourceResponse::new(
                    &request,
                    ResponseStatus::Success,
                    "Delete: the database, its role and its data are kept",
                    &fallback_id,
                    json!({}),
                )
            }
            Ok(Some(done)) => {
                tracing::info!(
                    role = %done.role,
                    database = %done.database,
                    migrations = ?done.migrations_applied,
                    "db-setup: done"
                );
                CustomResourceResponse::new(
                    &request,
                    ResponseStatus::Success,
                    &format!(
                        "role {} owns schema {APP_SCHEMA} in database {}",
                        done.role, done.database
                    ),
                    &done.physical_id(),
                    json!({
                        "Role": done.role,
                        "Database": done.database,
                        "Schema": APP_SCHEMA,
                        "MigrationsApplied": done.migrations_applied.len(),
                    }),
                )
            }
            Err(e) => {
                let reason = redact(&e.to_string(), &sensitive);
                tracing::error!(error = %reason, "db-setup: failed");
                let reason = match log {
                    Some(log) => format!("{reason} (log: {log})"),
                    None => reason,
                };
                CustomResourceResponse::new(
                    &request,
                    ResponseStatus::Failed,
                    &redact(&reason, &sensitive),
                    &fallback_id,
                    json!({}),
                )
            }
        };
        self.responder
            .put(&request.response_url, &response, deadline)
            .await?;
        tracing::info!(status = ?response.status, "db-setup: answered CloudFormation");
        Ok(response)
    }

    /// Create or Update: the role, the schema, the migrations.
    async fn provision(
        &self,
        request: &CustomResourceRequest,
        until: Instant,
        sensitive: &mut Vec<String>,
        during: &mut &'static str,
    ) -> Result<Provisioned, DbSetupError> {
        let settings = self
            .settings
            .as_ref()
            .map_err(|e| DbSetupError::Config(e.clone()))?;
        if let Some(schema) = request.property("Schema").filter(|s| *s != APP_SCHEMA) {
            return Err(DbSetupError::Properties(format!(
                "Schema {schema:?}: infra/db/app-role.sql makes schema {APP_SCHEMA} only"
            )));
        }
        if let Some(arn) = request
            .property("AppSecretArn")
            .filter(|a| *a != settings.app_secret_arn)
        {
            return Err(DbSetupError::Properties(format!(
                "AppSecretArn {arn} is not the function's TXPIPE_PG_SECRET_ARN {}",
                settings.app_secret_arn
            )));
        }
        *during = "reading the secrets";
        tracing::info!(
            admin_secret = %settings.admin_secret_arn,
            app_secret = %settings.app_secret_arn,
            "db-setup: reading the master and application secrets"
        );
        let admin = read_secret(&self.secrets, &settings.admin_secret_arn).await?;
        sensitive.push(admin.password.clone());
        let app = read_secret(&self.secrets, &settings.app_secret_arn).await?;
        sensitive.push(app.password.clone());
        let app_config = settings.pg.config_with(&app);
        let admin_config = settings.pg.config_with(&SecretCredentials {
            username: admin.username.clone(),
            password: admin.password.clone(),
            // Where the application connects, whatever the admin secret says.
            host: None,
            port: None,
            dbname: None,
        });
        let admin_config = with_target(admin_config, &app_config);

        *during = "connecting as the admin user";
        tracing::info!(
            user = %admin.username,
            target = %target(&admin_config),
            ssl = ?settings.pg.ssl(),
            "db-setup: connecting as the admin user"
        );
        let admin_client = connect(&settings.pg, &admin_config, until).await?;
        admin_client
            .batch_execute(&format!(
                "SET statement_timeout = {}; SET lock_timeout = 10000",
                settings.pg.statement_timeout.as_millis()
            ))
            .await
            .map_err(PgError::db("setting the session's timeouts"))?;

        *during = "creating the role and schema";
        let verifier = app_role::scram_verifier(&app.password);
        sensitive.push(verifier.clone());
        tracing::info!(role = %app.username, "db-setup: creating or updating the role and schema (infra/db/app-role.sql)");
        let database = app_role::apply(
            &admin_client,
            &app.username,
            &verifier,
            request.property("Database"),
        )
        .await?;
        drop(admin_client);

        *during = "connecting as the application role";
        tracing::info!(role = %app.username, "db-setup: connecting as the role (its password works) to run the migrations");
        let mut app_client = connect(&settings.pg, &app_config, until).await?;
        let schema: Option<String> = app_client
            .query_one("SELECT current_schema()", &[])
            .await
            .map_err(PgError::db("reading the role's schema"))?
            .get(0);
        if schema.as_deref() != Some(APP_SCHEMA) {
            return Err(DbSetupError::Properties(format!(
                "role {} resolves unqualified names to schema {schema:?}, not {APP_SCHEMA}: its search_path is set for database {database} only",
                app.username
            )));
        }
        *during = "running the migrations";
        app_client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                settings.pg.statement_timeout.as_millis()
            ))
            .await
            .map_err(PgError::db("setting the session's timeout"))?;
        let migrations_applied = migrate(&mut app_client).await?;
        Ok(Provisioned {
            role: app.username.clone(),
            database,
            migrations_applied,
        })
    }
}

/// The admin's settings with the application's host, port and database.
fn with_target(
    mut admin: tokio_postgres::Config,
    app: &tokio_postgres::Config,
) -> tokio_postgres::Config {
    if admin.get_hosts().is_empty() {
        for host in app.get_hosts() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => admin.host(h),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => admin.host_path(p),
            };
        }
    }
    if admin.get_ports().is_empty() {
        for port in app.get_ports() {
            admin.port(*port);
        }
    }
    if admin.get_dbname().is_none() {
        if let Some(db) = app.get_dbname() {
            admin.dbname(db);
        }
    }
    admin
}

fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    format!(
        "{host}:{}/{}",
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_dbname().unwrap_or("?")
    )
}

/// Connects, trying again while the failure may pass (a database still starting, a
/// network interface still attaching) and time is left.
async fn connect(
    settings: &PgSettings,
    config: &tokio_postgres::Config,
    until: Instant,
) -> Result<Client, PgError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match settings.connect(config).await {
            Ok(client) => return Ok(client),
            Err(e) if e.retry() == Retry::Transient && Instant::now() + wait < until => {
                tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "db-setup: cannot connect yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_what_is_missing() {
        let err =
            Settings::from_vars(&EnvVars::from_pairs([("TXPIPE_PG_SECRET_ARN", "a")])).unwrap_err();
        assert!(err.to_string().contains(ADMIN_SECRET_VAR), "{err}");
        let err = Settings::from_vars(&EnvVars::from_pairs([(ADMIN_SECRET_VAR, "a")])).unwrap_err();
        assert!(err.to_string().contains("TXPIPE_PG_SECRET_ARN"), "{err}");
        let ok = Settings::from_vars(&EnvVars::from_pairs([
            (ADMIN_SECRET_VAR, "admin"),
            ("TXPIPE_PG_SECRET_ARN", "app"),
            ("TXPIPE_PG_HOST", "db.example"),
            ("TXPIPE_PG_SSLMODE", "verify-full"),
        ]))
        .unwrap();
        assert_eq!(ok.admin_secret_arn, "admin");
        assert_eq!(ok.pg.secret_arn(), Some("app"));
    }

    #[test]
    fn the_admin_goes_where_the_application_goes() {
        let app: tokio_postgres::Config =
            "host=db port=5433 dbname=txpipe user=app".parse().unwrap();
        let admin = with_target("user=master password=x".parse().unwrap(), &app);
        assert_eq!(target(&admin), "db:5433/txpipe");
        assert_eq!(admin.get_user(), Some("master"));
    }
}
