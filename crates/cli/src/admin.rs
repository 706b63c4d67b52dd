//! `cascade admin`: the configuration as YAML files, in the manner of `kubectl`. A file
//! holds entities as YAML documents, each with its `kind`:
//!
//! ```yaml
//! kind: MediatedBid
//! id: coolads-de
//! account_id: "8953"
//! network_id: coolads
//! cpm: "2.00"
//! ```
//!
//! `apply` creates or replaces every entity of the file in one atomic write; `diff`
//! shows what `apply` would change; `delete` removes them; `get` prints entities in the
//! same form, so `get` output can be edited and applied back.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cascade_admin::convert;
use cascade_admin::yaml::{parse_entities, to_yaml};
use cascade_core::config::Configuration;
use cascade_core::entity::{Entity, EntityKind};
use cascade_proto::admin::v1 as pb;
use cascade_proto::admin::v1::admin_client::AdminClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How often a write is recomputed when another writer got in first.
const WRITE_ATTEMPTS: usize = 5;

/// Where the admin API is and how to be let in; shared by `cascade admin` and
/// `cascade report`.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The admin API: bid-intake's address, `host:port` (TLS when `--ca-file` or
    /// `--cert-file` is given) or a URL (`http://`, `https://`).
    #[arg(long, env = "CASCADE_ADMIN_TARGET", default_value = "127.0.0.1:50051")]
    target: String,
    /// The admin bearer token (what bid-intake's admin_token is set to).
    #[arg(long, env = "CASCADE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// With an `https://` target: trust this CA (PEM) instead of the system's roots.
    #[arg(long, env = "CASCADE_ADMIN_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// With an `https://` target that requires client certificates: this one (PEM)...
    #[arg(long, env = "CASCADE_ADMIN_CERT_FILE", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// ...and its key (PEM).
    #[arg(long, env = "CASCADE_ADMIN_KEY_FILE", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// Send the token over plaintext (`http://`) to a host other than this machine's
    /// loopback: only on a network you trust.
    #[arg(long)]
    allow_plaintext: bool,
}

impl ApiArgs {
    /// A channel to the admin API whose calls carry the token.
    pub async fn connect(&self) -> anyhow::Result<AuthorizedChannel> {
        let tls = self.ca_file.is_some() || self.cert_file.is_some();
        let target = crate::target::url(&self.target, tls);
        let mut endpoint = tonic::transport::Endpoint::from_shared(target.clone())
            .with_context(|| format!("--target {:?} is not host:port or a URL", self.target))?;
        let uri = endpoint.uri().clone();
        match uri.scheme_str() {
            Some("https") => {
                let tls = cascade_server::tls::client(
                    self.ca_file.as_deref(),
                    cascade_server::tls::pair(self.cert_file.as_deref(), self.key_file.as_deref()),
                )?;
                endpoint = endpoint
                    .tls_config(tls)
                    .context("invalid TLS certificate or key")?;
            }
            Some("http") => {
                if self.ca_file.is_some() || self.cert_file.is_some() {
                    bail!("--ca-file and --cert-file need an https:// target");
                }
                let host = uri.host().unwrap_or_default();
                if !self.allow_plaintext && !is_loopback(host) {
                    bail!(
                        "refusing to send the admin token in plaintext to {host}: use an https:// target (or --allow-plaintext on a network you trust)"
                    );
                }
            }
            _ => bail!("--target {:?}: the scheme is http or https", self.target),
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the admin API at {target}"))?;
        let token = format!("Bearer {}", self.token)
            .parse()
            .context("the admin token must be printable ASCII")?;
        Ok(InterceptedService::new(channel, Authorization(token)))
    }
}

pub type AuthorizedChannel = InterceptedService<Channel, Authorization>;

#[derive(clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Print entities: all of them, one kind (`networks`), or one (`network coolads`).
    Get {
        kind: Option<String>,
        id: Option<String>,
        /// Only this account's entities.
        #[arg(long)]
        account: Option<String>,
        /// `yaml` (documents, the form `apply` reads) or `json` (an array of the same
        /// objects, for jq).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Create or replace every entity in the file, all or nothing.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Validate and show the changes without making them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what `apply` would change, entity by entity and field by field. Exits 0 when
    /// nothing would change, 1 when something would, 2 or more on an error (as `kubectl
    /// diff`).
    Diff {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the entities of a file, or one entity by kind and id.
    Delete {
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "id"])]
        file: Option<PathBuf>,
        #[arg(requires = "id")]
        kind: Option<String>,
        id: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Yaml,
    Json,
}

type Client = AdminClient<AuthorizedChannel>;

/// The exit code of `diff` when it could not tell (kubectl's: above 1).
const DIFF_FAILED: u8 = 2;

/// `localhost` or a loopback address: plaintext never leaves the machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Authorization(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Authorization {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Runs `cascade admin`; returns the process exit code.
pub async fn run(args: AdminArgs) -> anyhow::Result<u8> {
    if let AdminCommand::Diff { file } = &args.command {
        // 1 means "there are differences": an error must not look like one.
        return Ok(match diff(&args.api, file).await {
            Ok(differs) => u8::from(differs),
            Err(error) => {
                eprintln!("error: {error:#}");
                DIFF_FAILED
            }
        });
    }
    let mut client = client(&args.api).await?;
    match args.command {
        AdminCommand::Get {
            kind,
            id,
            account,
            output,
        } => {
            let configuration = fetch(&mut client).await?;
            let kind = kind.as_deref().map(parse_kind).transpose()?;
            let entities: Vec<Entity> = configuration
                .entities()
                .into_iter()
                .filter(|e| kind.is_none_or(|k| e.kind() == k))
                .filter(|e| id.as_deref().is_none_or(|id| e.id() == id))
                .filter(|e| account.as_deref().is_none_or(|a| e.account_id() == Some(a)))
                .collect();
            if entities.is_empty() && id.is_some() {
                bail!("not found");
            }
            match output {
                Format::Yaml => print!("{}", to_yaml(&entities)?),
                Format::Json => println!("{}", serde_json::to_string_pretty(&entities)?),
            }
            Ok(0)
        }
        AdminCommand::Apply { file, dry_run } => {
            let response = apply_file(&mut client, &file, dry_run).await?;
            report(&response, dry_run);
            Ok(0)
        }
        AdminCommand::Diff { .. } => unreachable!("answered above"),
        AdminCommand::Delete {
            file,
            kind,
            id,
            dry_run,
        } => {
            let targets: Vec<(EntityKind, String)> = match (file, kind, id) {
                (Some(file), _, _) => read_entities(&file)?
                    .iter()
                    .map(|e| (e.kind(), e.id().to_string()))
                    .collect(),
                (None, Some(kind), Some(id)) => vec![(parse_kind(&kind)?, id)],
                _ => bail!("delete needs -f FILE, or KIND and ID"),
            };
            let response = write(&mut client, dry_run, |configuration| {
                for (kind, id) in &targets {
                    if configuration.remove_entity(*kind, id).is_none() {
                        bail!("no {kind} with id {id:?}");
                    }
                }
                configuration.validate().map_err(|e| {
                    anyhow::anyhow!("cannot delete: something still refers to it: {e}")
                })
            })
            .await?;
            report(&response, dry_run);
            Ok(0)
        }
    }
}

async fn client(api: &ApiArgs) -> anyhow::Result<Client> {
    Ok(AdminClient::new(api.connect().await?)
        .max_decoding_message_size(cascade_admin::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cascade_admin::MAX_MESSAGE_BYTES))
}

/// Prints what applying `file` would change — each entity (`+`, `~`, `-`) and under it
/// the fields that differ — after the server has validated it (a dry run); whether
/// anything would.
async fn diff(api: &ApiArgs, file: &Path) -> anyhow::Result<bool> {
    let mut client = client(api).await?;
    let entities = read_entities(file)?;
    let before = fetch(&mut client).await?;
    let mut after = before.clone();
    for entity in &entities {
        after.put_entity(entity.clone());
    }
    // The server checks the result as apply would (references, values).
    let request = pb::ApplyConfigurationRequest {
        configuration: Some(convert::configuration_to_proto(&after)),
        expected_version: before.version,
        dry_run: true,
    };
    client
        .apply_configuration(request)
        .await
        .map_err(status_error)?;
    let changes = cascade_core::entity::diff(&before, &after);
    for change in &changes {
        println!("{change}");
        let old = before.entity(change.kind, &change.id);
        let new = after.entity(change.kind, &change.id);
        for field in cascade_admin::fields::field_changes(old.as_ref(), new.as_ref()) {
            println!("    {field}");
        }
    }
    Ok(!changes.is_empty())
}

/// Creates or replaces every entity of `file` in one write.
async fn apply_file(
    client: &mut Client,
    file: &Path,
    dry_run: bool,
) -> anyhow::Result<pb::ApplyConfigurationResponse> {
    let entities = read_entities(file)?;
    write(client, dry_run, |configuration| {
        for entity in &entities {
            configuration.put_entity(entity.clone());
        }
        Ok(())
    })
    .await
}

fn parse_kind(text: &str) -> anyhow::Result<EntityKind> {
    EntityKind::parse(text).with_context(|| {
        let kinds: Vec<&str> = EntityKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown kind {text:?}; one of {}", kinds.join(", "))
    })
}

fn report(response: &pb::ApplyConfigurationResponse, dry_run: bool) {
    for change in &response.changes {
        println!("{change}");
    }
    match (dry_run, response.changes.is_empty()) {
        (_, true) => println!("no changes (version {})", response.version),
        (true, false) => println!("dry run: nothing changed (version {})", response.version),
        (false, false) => println!("applied: version {}", response.version),
    }
}

async fn fetch(client: &mut Client) -> anyhow::Result<Configuration> {
    let configuration = client
        .get_configuration(pb::GetConfigurationRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    convert::configuration_from_proto(configuration)
        .context("the admin API returned a configuration this CLI cannot read")
}

/// Reads the configuration, changes it, and applies it at the version it read: the
/// server refuses it if anything was written in between, and this starts over.
async fn write(
    client: &mut Client,
    dry_run: bool,
    change: impl Fn(&mut Configuration) -> anyhow::Result<()>,
) -> anyhow::Result<pb::ApplyConfigurationResponse> {
    for _ in 0..WRITE_ATTEMPTS {
        let mut configuration = fetch(client).await?;
        let version = configuration.version;
        change(&mut configuration)?;
        let request = pb::ApplyConfigurationRequest {
            configuration: Some(convert::configuration_to_proto(&configuration)),
            expected_version: version,
            dry_run,
        };
        match client.apply_configuration(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => return Err(status_error(status)),
        }
    }
    bail!("the configuration kept changing while applying; try again")
}

pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Reads every YAML document of `path` as an entity.
fn read_entities(path: &Path) -> anyhow::Result<Vec<Entity>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_entities(&text).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_round_trip_through_yaml_documents() {
        let text = r#"
kind: Account
id: "8953"
parent_id: "1"
---
kind: MediatedBid
id: coolads-de
account_id: "8953"
network_id: coolads
cpm: "2.00"
targeting:
  countries: [DEU]
---
"#;
        let entities = parse_entities(text).unwrap();
        assert_eq!(entities.len(), 2);
        assert_eq!(entities[1].kind(), EntityKind::MediatedBid);
        assert_eq!(
            parse_entities(&to_yaml(&entities).unwrap()).unwrap(),
            entities
        );
    }

    #[test]
    fn a_bad_document_is_named() {
        let error = parse_entities("kind: Account\nid: a\n---\nkind: Gadget\nid: b\n").unwrap_err();
        assert!(format!("{error:#}").contains("document 2"), "{error:#}");
    }
}
