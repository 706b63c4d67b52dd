//! The Admin gRPC service: reads and writes the configuration in the shared [`Store`].
//! Every write is a whole-configuration compare-and-set at the version it was computed
//! from, so a write is all or nothing and never silently undoes a concurrent one.

use std::sync::Arc;

use cascade_core::config::{ConfigError, Configuration};
use cascade_core::entity::{Entity, EntityKind, diff};
use cascade_proto::admin::v1 as pb;
use cascade_proto::admin::v1::admin_server::{Admin, AdminServer};
use cascade_server::status;
use cascade_state::{StateError, Store};
use tonic::{Request, Response, Status};

use crate::convert;

/// How many times a write without an expected version is recomputed when another
/// write got in between.
const WRITE_ATTEMPTS: usize = 5;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1_000;
/// Large enough for a configuration of a million entities' worth of small ones.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("{0}")]
    Referenced(ConfigError),
    #[error("the configuration is at version {actual}, the request expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    #[error("no {kind} with id {id:?}")]
    NotFound { kind: EntityKind, id: String },
    #[error("page_token: {0}")]
    PageToken(&'static str),
    #[error("the shared state failed: {0}")]
    Store(#[source] StateError),
}

impl From<StateError> for AdminError {
    fn from(error: StateError) -> Self {
        match error {
            StateError::InvalidConfiguration(error) => AdminError::Invalid(error),
            StateError::VersionConflict { expected, actual } => {
                AdminError::Conflict { expected, actual }
            }
            other => AdminError::Store(other),
        }
    }
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        let message = error.to_string();
        match &error {
            AdminError::Invalid(invalid) => {
                status::field_violation(&invalid.field, &invalid.message)
            }
            AdminError::PageToken(_) => status::invalid_argument(message),
            AdminError::Referenced(_) => Status::failed_precondition(message),
            AdminError::Conflict { .. } => Status::aborted(message),
            AdminError::NotFound { .. } => Status::not_found(message),
            // The store's own words (addresses, Redis replies) stay in the log.
            AdminError::Store(store) if store.is_unavailable() => status::unavailable(
                "the shared state is unavailable; nothing was changed",
                &error,
            ),
            AdminError::Store(_) => status::internal("admin", &error),
        }
    }
}

fn prefixed(prefix: &str, error: ConfigError) -> ConfigError {
    ConfigError::new(format!("{prefix}.{}", error.field), error.message)
}

/// The admin API over `store`.
pub struct AdminService {
    store: Arc<dyn Store>,
}

impl AdminService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The gRPC server for this service, accepting only calls that carry
    /// `authorization: Bearer <token>`. Without a token the admin API refuses
    /// everything: it is never open by accident.
    pub fn into_server(
        self,
        token: Option<String>,
    ) -> tonic::service::interceptor::InterceptedService<AdminServer<AdminService>, BearerToken>
    {
        let server = AdminServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::service::interceptor::InterceptedService::new(server, BearerToken::new(token))
    }

    /// Computes the new configuration from the stored one with `change` and stores it
    /// at the version it was computed from. With `expected_version` 0, a concurrent
    /// write makes it start over (a few times); otherwise it is a conflict.
    async fn write(
        &self,
        expected_version: u64,
        dry_run: bool,
        change: impl Fn(Configuration) -> Result<Configuration, AdminError>,
    ) -> Result<pb::ApplyConfigurationResponse, AdminError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.store.configuration().await?;
            if expected_version != 0 && current.version != expected_version {
                return Err(AdminError::Conflict {
                    expected: expected_version,
                    actual: current.version,
                });
            }
            let version = current.version;
            let updated = change(current.clone())?;
            updated.validate().map_err(AdminError::Invalid)?;
            let changes: Vec<String> = diff(&current, &updated)
                .iter()
                .map(ToString::to_string)
                .collect();
            if dry_run || changes.is_empty() {
                return Ok(pb::ApplyConfigurationResponse { version, changes });
            }
            match self.store.apply_configuration(updated, Some(version)).await {
                Ok(version) => {
                    tracing::info!(version, changes = changes.len(), "configuration applied");
                    return Ok(pb::ApplyConfigurationResponse { version, changes });
                }
                Err(StateError::VersionConflict { .. })
                    if expected_version == 0 && attempt < WRITE_ATTEMPTS => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_configuration(
        &self,
        _request: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::Configuration>, Status> {
        let configuration = self.store.configuration().await.map_err(AdminError::from)?;
        Ok(Response::new(convert::configuration_to_proto(
            &configuration,
        )))
    }

    async fn apply_configuration(
        &self,
        request: Request<pb::ApplyConfigurationRequest>,
    ) -> Result<Response<pb::ApplyConfigurationResponse>, Status> {
        let request = request.into_inner();
        let configuration =
            convert::configuration_from_proto(request.configuration.unwrap_or_default())
                .map_err(|e| AdminError::Invalid(prefixed("configuration", e)))?;
        configuration
            .validate()
            .map_err(|e| AdminError::Invalid(prefixed("configuration", e)))?;
        let response = self
            .write(request.expected_version, request.dry_run, |_| {
                Ok(configuration.clone())
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn put_entity(
        &self,
        request: Request<pb::PutEntityRequest>,
    ) -> Result<Response<pb::ApplyConfigurationResponse>, Status> {
        let request = request.into_inner();
        let entity = convert::entity_from_proto(request.entity).map_err(AdminError::Invalid)?;
        let response = self
            .write(
                request.expected_version,
                request.dry_run,
                |mut configuration| {
                    configuration.put_entity(entity.clone());
                    configuration.validate().map_err(|e| {
                        AdminError::Invalid(relative_to_entity(&configuration, &entity, e))
                    })?;
                    Ok(configuration)
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn get_entity(
        &self,
        request: Request<pb::EntityRef>,
    ) -> Result<Response<pb::Entity>, Status> {
        let request = request.into_inner();
        let kind = convert::kind_from_proto(request.kind, "kind").map_err(AdminError::Invalid)?;
        let configuration = self.store.configuration().await.map_err(AdminError::from)?;
        let entity = configuration
            .entity(kind, &request.id)
            .ok_or(AdminError::NotFound {
                kind,
                id: request.id,
            })?;
        Ok(Response::new(convert::entity_to_proto(&entity)))
    }

    async fn delete_entity(
        &self,
        request: Request<pb::DeleteEntityRequest>,
    ) -> Result<Response<pb::ApplyConfigurationResponse>, Status> {
        let request = request.into_inner();
        let reference = request.entity.unwrap_or_default();
        let kind =
            convert::kind_from_proto(reference.kind, "entity.kind").map_err(AdminError::Invalid)?;
        let id = reference.id;
        let response = self
            .write(
                request.expected_version,
                request.dry_run,
                |mut configuration| {
                    if configuration.remove_entity(kind, &id).is_none() {
                        return Err(AdminError::NotFound {
                            kind,
                            id: id.clone(),
                        });
                    }
                    configuration.validate().map_err(AdminError::Referenced)?;
                    Ok(configuration)
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Result<Response<pb::ListEntitiesResponse>, Status> {
        let request = request.into_inner();
        let kinds: Vec<EntityKind> = match request.kind {
            0 => EntityKind::ALL.to_vec(),
            kind => vec![convert::kind_from_proto(kind, "kind").map_err(AdminError::Invalid)?],
        };
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let configuration = self.store.configuration().await.map_err(AdminError::from)?;
        let start = PageToken::parse(&request.page_token, configuration.version)?;
        let mut matching = kinds
            .into_iter()
            .flat_map(|kind| configuration.entities_of(kind))
            .filter(|entity| {
                request.account_id.is_empty()
                    || entity.account_id() == Some(request.account_id.as_str())
            })
            .skip(start);
        let entities: Vec<pb::Entity> = matching
            .by_ref()
            .take(page_size)
            .map(|e| convert::entity_to_proto(&e))
            .collect();
        let next_page_token = match matching.next() {
            Some(_) => PageToken {
                version: configuration.version,
                offset: start + entities.len(),
            }
            .to_string(),
            None => String::new(),
        };
        Ok(Response::new(pb::ListEntitiesResponse {
            entities,
            next_page_token,
            version: configuration.version,
        }))
    }
}

/// Rewrites a validation error about the entity just put (`networks[7].timeout_ms`) to
/// name the request's field (`entity.network.timeout_ms`).
fn relative_to_entity(
    configuration: &Configuration,
    entity: &Entity,
    error: ConfigError,
) -> ConfigError {
    let kind = entity.kind();
    let position = configuration
        .entities_of(kind)
        .iter()
        .position(|e| e.id() == entity.id());
    match position.and_then(|i| error.field.strip_prefix(&format!("{kind}s[{i}]"))) {
        Some(rest) => ConfigError::new(format!("entity.{kind}{rest}"), error.message),
        None => error,
    }
}

/// Where the next page of a listing starts. It carries the configuration version so a
/// listing across a change fails rather than skip or repeat entities.
struct PageToken {
    version: u64,
    offset: usize,
}

impl PageToken {
    fn parse(token: &str, current_version: u64) -> Result<usize, AdminError> {
        if token.is_empty() {
            return Ok(0);
        }
        let (version, offset) = token
            .split_once(':')
            .and_then(|(v, o)| Some((v.parse::<u64>().ok()?, o.parse::<usize>().ok()?)))
            .ok_or(AdminError::PageToken("not a token this API issued"))?;
        if version != current_version {
            return Err(AdminError::Conflict {
                expected: version,
                actual: current_version,
            });
        }
        Ok(offset)
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.version, self.offset)
    }
}

/// Accepts a call only with `authorization: Bearer <token>`, compared in constant time.
#[derive(Clone)]
pub struct BearerToken(Option<String>);

impl BearerToken {
    /// Requires `token`; `None` refuses every call.
    pub fn new(token: Option<String>) -> Self {
        Self(token)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Err(Status::unauthenticated(
                "the admin API is disabled: bid-intake has no admin_token configured",
            ));
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: Bearer <token> is required"))?;
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the admin token is wrong"))
        }
    }
}

/// Compares without stopping at the first difference, so response timing does not
/// reveal how much of a guessed token is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use cascade_state::MemoryStore;
    use tonic::Code;

    use super::*;

    fn service() -> AdminService {
        AdminService::new(Arc::new(
            MemoryStore::with_configuration(Configuration::default()).unwrap(),
        ))
    }

    fn put(entity: pb::entity::Entity, expected_version: u64) -> Request<pb::PutEntityRequest> {
        Request::new(pb::PutEntityRequest {
            entity: Some(pb::Entity {
                entity: Some(entity),
            }),
            expected_version,
            dry_run: false,
        })
    }

    fn account(id: &str) -> pb::entity::Entity {
        pb::entity::Entity::Account(pb::Account {
            id: id.into(),
            ..Default::default()
        })
    }

    fn network(id: &str) -> pb::entity::Entity {
        pb::entity::Entity::Network(pb::Network {
            id: id.into(),
            account_id: "a".into(),
            endpoint: "http://127.0.0.1:1/openrtb".into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn entities_are_created_listed_and_deleted_unless_referenced() {
        let admin = service();
        let created = admin
            .put_entity(put(account("a"), 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.changes, ["+ account a"]);
        admin
            .put_entity(put(network("n"), created.version))
            .await
            .unwrap();
        let bid = pb::entity::Entity::MediatedBid(pb::MediatedBid {
            id: "b".into(),
            account_id: "a".into(),
            network_id: "n".into(),
            cpm_micros: 1_500_000,
            ..Default::default()
        });
        admin.put_entity(put(bid, 0)).await.unwrap();

        let listed = admin
            .list_entities(Request::new(pb::ListEntitiesRequest {
                account_id: "a".into(),
                page_size: 2,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.entities.len(), 2);
        let rest = admin
            .list_entities(Request::new(pb::ListEntitiesRequest {
                account_id: "a".into(),
                page_token: listed.next_page_token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.entities.len(), 1);
        assert!(rest.next_page_token.is_empty());

        let delete = |kind: pb::EntityKind, id: &str| {
            Request::new(pb::DeleteEntityRequest {
                entity: Some(pb::EntityRef {
                    kind: kind.into(),
                    id: id.into(),
                }),
                ..Default::default()
            })
        };
        let refused = admin
            .delete_entity(delete(pb::EntityKind::Network, "n"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().contains("network_id"),
            "{}",
            refused.message()
        );
        let missing = admin
            .delete_entity(delete(pb::EntityKind::Network, "x"))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        let deleted = admin
            .delete_entity(delete(pb::EntityKind::MediatedBid, "b"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.changes, ["- mediated_bid b"]);
    }

    #[tokio::test]
    async fn invalid_entities_name_the_request_field_and_change_nothing() {
        let admin = service();
        admin.put_entity(put(account("a"), 0)).await.unwrap();
        let mut bad = network("n");
        if let pb::entity::Entity::Network(n) = &mut bad {
            n.timeout_ms = 60_000;
        }
        let error = admin.put_entity(put(bad, 0)).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(
            error.message().starts_with("entity.network.timeout_ms:"),
            "{}",
            error.message()
        );
        let configuration = admin
            .get_configuration(Request::new(pb::GetConfigurationRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            configuration.version, 2,
            "the store's first version, then the account"
        );
        assert!(configuration.networks.is_empty());
    }

    #[tokio::test]
    async fn dry_runs_report_changes_without_writing_and_stale_versions_abort() {
        let admin = service();
        let configuration = pb::Configuration {
            accounts: vec![pb::Account {
                id: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let apply = |expected_version, dry_run| {
            Request::new(pb::ApplyConfigurationRequest {
                configuration: Some(configuration.clone()),
                expected_version,
                dry_run,
            })
        };
        let dry = admin
            .apply_configuration(apply(0, true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (dry.version, dry.changes.as_slice()),
            (1, ["+ account a".to_string()].as_slice())
        );
        let applied = admin
            .apply_configuration(apply(0, false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(applied.version, 2);
        let again = admin
            .apply_configuration(apply(2, false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (again.version, again.changes.len()),
            (2, 0),
            "no change, no new version"
        );
        admin.put_entity(put(account("b"), 0)).await.unwrap();
        let stale = admin
            .apply_configuration(apply(2, false))
            .await
            .unwrap_err();
        assert_eq!(stale.code(), Code::Aborted);
    }

    #[test]
    fn the_bearer_token_is_required_and_checked() {
        use tonic::service::Interceptor;
        let with = |value: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
            request
        };
        let mut interceptor = BearerToken(Some("s3cret".into()));
        assert!(interceptor.call(with("Bearer s3cret")).is_ok());
        assert_eq!(
            interceptor.call(with("Bearer s3cre")).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            interceptor.call(Request::new(())).unwrap_err().code(),
            Code::Unauthenticated
        );
        let mut disabled = BearerToken(None);
        assert_eq!(
            disabled.call(with("Bearer s3cret")).unwrap_err().code(),
            Code::Unauthenticated
        );
    }
}
