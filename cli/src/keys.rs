//! `switchbord keys`: API key administration, through a running core (`--core-url` with an
//! admin key) or directly on the database (for the first key, or when no server runs).

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{Value as Json, json};
use switchbord_api::v1::{
    self, ApiKey, CreateApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest,
};
use switchbord_core::access::{self, Caller, KeyHasher, NewKey, Role, api_key_proto, check_pepper};
use switchbord_core::config::Secret;
use switchbord_core::request::RequestId;
use uuid::Uuid;

use crate::cli::DatabaseArgs;
use crate::core_connection::{Core, refused};
use crate::database::{self, Database};
use crate::local_state::load_or_create_pepper;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,

    /// gRPC URL of a running core, for example http://127.0.0.1:50051. Unset: work directly
    /// on the database (DATABASE_URL, or the private cluster in the data directory).
    #[arg(long, env = "SWITCHBORD_CORE_URL", global = true)]
    pub core_url: Option<String>,

    /// Admin API key used with --core-url.
    #[arg(
        long,
        env = "SWITCHBORD_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<Secret>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Key pepper for direct database access; unset: `$SWITCHBORD_DATA_DIR/key-pepper`.
    #[arg(
        long,
        env = "SWITCHBORD_KEY_PEPPER",
        hide_env_values = true,
        global = true
    )]
    pub key_pepper: Option<Secret>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown only this once).
    Create {
        /// Name, for example crm-sync.
        #[arg(long)]
        name: String,
        /// admin, manager or user.
        #[arg(long)]
        role: Role,
        /// Expiry time (RFC 3339); unset: never.
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// List keys (never their secrets).
    List {
        /// Include revoked keys.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key's id.
        id: Uuid,
    },
}

/// A created key and its one-time secret, or keys.
enum Outcome {
    Created(ApiKey, String),
    Keys(Vec<ApiKey>),
    Revoked(ApiKey),
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let outcome = match &args.core_url {
        Some(url) => through_core(url, args.api_key.as_ref(), args.command).await?,
        None => on_database(&args.database, args.key_pepper.clone(), args.command).await?,
    };
    print(outcome, args.json);
    Ok(())
}

async fn through_core(
    url: &str,
    api_key: Option<&Secret>,
    command: KeysCommand,
) -> anyhow::Result<Outcome> {
    let mut client = Core::connect(url, api_key).await?.access();
    Ok(match command {
        KeysCommand::Create {
            name,
            role,
            expires_at,
        } => {
            let response = client
                .create_api_key(CreateApiKeyRequest {
                    name,
                    role: role.to_proto().into(),
                    expires_at: expires_at.map(|time| prost_types::Timestamp {
                        seconds: time.timestamp(),
                        nanos: 0,
                    }),
                })
                .await
                .map_err(refused)?
                .into_inner();
            Outcome::Created(response.api_key.unwrap_or_default(), response.secret)
        }
        KeysCommand::List { include_revoked } => {
            // Every page: the command lists every key, as it does on the database.
            let mut keys = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_api_keys(ListApiKeysRequest {
                        include_revoked,
                        page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                keys.extend(page.api_keys);
                if page.next_page_token.is_empty() {
                    break Outcome::Keys(keys);
                }
                page_token = page.next_page_token;
            }
        }
        KeysCommand::Revoke { id } => Outcome::Revoked(
            client
                .revoke_api_key(RevokeApiKeyRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner()
                .api_key
                .unwrap_or_default(),
        ),
    })
}

async fn on_database(
    database: &DatabaseArgs,
    pepper: Option<Secret>,
    command: KeysCommand,
) -> anyhow::Result<Outcome> {
    let pepper = match pepper {
        Some(pepper) => pepper,
        None => load_or_create_pepper(&database.data_dir)?,
    };
    let hasher = KeyHasher::new(pepper.expose().as_bytes().to_vec());
    let opened = Database::attach_or_open(database).await?;
    let result = async {
        switchbord_core::db::run_migrations(opened.url()).await?;
        let mut connection = database::connect(opened.url()).await?;
        // A key made with another pepper than the core's would never authenticate.
        check_pepper(&mut connection, &hasher).await?;
        let actor = Caller::system("switchbord keys");
        let request_id = RequestId(Uuid::new_v4());
        anyhow::Ok(match command {
            KeysCommand::Create {
                name,
                role,
                expires_at,
            } => {
                let new = NewKey {
                    name,
                    role,
                    expires_at,
                    custom_secret: None,
                };
                let (row, secret) =
                    access::create_key(&mut connection, &hasher, new, &actor, request_id).await?;
                Outcome::Created(api_key_proto(row), secret)
            }
            KeysCommand::List { include_revoked } => Outcome::Keys(
                access::list_keys(&mut connection, include_revoked)
                    .await?
                    .into_iter()
                    .map(api_key_proto)
                    .collect(),
            ),
            KeysCommand::Revoke { id } => Outcome::Revoked(api_key_proto(
                access::revoke_key(&mut connection, id, &actor, request_id).await?,
            )),
        })
    }
    .await;
    let closed = opened.close().await;
    let outcome = result?;
    closed?;
    Ok(outcome)
}

fn key_json(key: &ApiKey) -> Json {
    let time = |value: &Option<prost_types::Timestamp>| {
        value
            .as_ref()
            .and_then(|time| DateTime::<Utc>::from_timestamp(time.seconds, 0))
            .map(|time| time.to_rfc3339())
    };
    json!({
        "id": key.id,
        "name": key.name,
        "role": role_name(key.role()),
        "prefix": key.prefix,
        "created_at": time(&key.created_at),
        "expires_at": time(&key.expires_at),
        "last_used_at": time(&key.last_used_at),
        "revoked_at": time(&key.revoked_at),
    })
}

fn role_name(role: v1::Role) -> &'static str {
    Role::from_proto(role).map_or("unspecified", Role::as_str)
}

fn print(outcome: Outcome, as_json: bool) {
    let mut out = std::io::stdout().lock();
    let text = match (&outcome, as_json) {
        (Outcome::Created(key, secret), true) => {
            json!({"api_key": key_json(key), "secret": secret}).to_string()
        }
        (Outcome::Created(key, secret), false) => format!(
            "Created API key `{}` ({}), id {}.\nSecret (shown only this once): {secret}",
            key.name,
            role_name(key.role()),
            key.id
        ),
        (Outcome::Keys(keys), true) => Json::Array(keys.iter().map(key_json).collect()).to_string(),
        (Outcome::Keys(keys), false) => keys
            .iter()
            .map(|key| {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                format!(
                    "{}  {:<16}  {:<7}  {}  {state}",
                    key.id,
                    key.prefix,
                    role_name(key.role()),
                    key.name
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        (Outcome::Revoked(key), true) => key_json(key).to_string(),
        (Outcome::Revoked(key), false) => format!("Revoked API key `{}` ({}).", key.name, key.id),
    };
    let _ = std::io::Write::write_all(&mut out, format!("{text}\n").as_bytes());
}
