//! Which roles may call which RPC: the one table that `docs/access.md` reproduces.

use super::role::Role;

const ANY_ROLE: &[Role] = &[Role::Admin, Role::Manager, Role::User];
const ADMIN: &[Role] = &[Role::Admin];
const OPERATORS: &[Role] = &[Role::Admin, Role::Manager];

/// The access rule of one RPC.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Full gRPC method path, `/package.Service/Method`.
    pub method: &'static str,
    /// Roles allowed to call it.
    pub roles: &'static [Role],
    /// An ingestion RPC behind the Charles legacy/compat paths: with
    /// `SWITCHBORD_AUTH_LEGACY_PATHS=off` it also accepts calls without a key.
    pub legacy_ingestion: bool,
    /// How callers prove who they are.
    pub credential: Credential,
}

/// The credential an RPC accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An API key whose role is in [`Rule::roles`].
    ApiKey,
    /// The Emarsys shared secret (or a JWT signed with it); roles do not apply.
    EmarsysSecret,
    /// Twenty's webhook signature, which covers the body and so is verified by the RPC itself;
    /// roles do not apply.
    TwentySignature,
}

impl Rule {
    const fn new(method: &'static str, roles: &'static [Role]) -> Self {
        Self {
            method,
            roles,
            legacy_ingestion: false,
            credential: Credential::ApiKey,
        }
    }

    const fn emarsys(method: &'static str) -> Self {
        Self {
            method,
            roles: &[],
            legacy_ingestion: false,
            credential: Credential::EmarsysSecret,
        }
    }

    const fn twenty_webhook(method: &'static str) -> Self {
        Self {
            method,
            roles: &[],
            legacy_ingestion: false,
            credential: Credential::TwentySignature,
        }
    }

    const fn ingestion(method: &'static str) -> Self {
        Self {
            method,
            roles: ANY_ROLE,
            legacy_ingestion: true,
            credential: Credential::ApiKey,
        }
    }

    pub fn allows(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Every Switchbord RPC. A method missing here is refused (and fails a test).
pub const RULES: &[Rule] = &[
    Rule::ingestion("/switchbord.v1.ContactService/UpsertContact"),
    Rule::new("/switchbord.v1.ContactService/GetContact", ANY_ROLE),
    Rule::ingestion("/switchbord.v1.JourneyService/TriggerJourney"),
    Rule::new("/switchbord.v1.EventService/PublishEvent", ANY_ROLE),
    Rule::new("/switchbord.v1.EventService/ListEventTypes", ANY_ROLE),
    Rule::new("/switchbord.v1.OutboxService/ListOutboxJobs", OPERATORS),
    Rule::new("/switchbord.v1.OutboxService/GetOutboxJob", OPERATORS),
    Rule::new("/switchbord.v1.OutboxService/GetOutboxStats", OPERATORS),
    Rule::new("/switchbord.v1.OutboxService/RetryOutboxJob", ADMIN),
    Rule::emarsys("/switchbord.v1.EmarsysService/IngestEmarsysEvent"),
    Rule::emarsys("/switchbord.v1.EmarsysService/CheckEmarsysCredentials"),
    Rule::new("/switchbord.v1.WebhookService/CreateEndpoint", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/GetEndpoint", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/ListEndpoints", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/UpdateEndpoint", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/DeleteEndpoint", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/EnableEndpoint", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/DisableEndpoint", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/RotateEndpointSecret", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/GetEndpointSecret", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/RegisterEventType", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/SendTestEvent", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/ListDeliveries", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/ListDeliveryAttempts", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/RetryDelivery", ADMIN),
    Rule::new("/switchbord.v1.WebhookService/RecoverDeliveries", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/SetTwentyConnection", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/GetTwentyConnection", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/TestTwentyConnection", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/DeleteTwentyConnection", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/GetFieldMapping", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/UpdateFieldMapping", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/StartBackfill", ADMIN),
    Rule::new("/switchbord.v1.TwentyService/GetSyncHealth", OPERATORS),
    Rule::new("/switchbord.v1.TwentyService/GetContactSync", OPERATORS),
    Rule::new("/switchbord.v1.TwentyService/ListFailedSyncs", OPERATORS),
    Rule::new("/switchbord.v1.TwentyService/RetryFailedSyncs", OPERATORS),
    Rule::twenty_webhook("/switchbord.v1.TwentyService/ReceiveTwentyWebhook"),
    Rule::new("/switchbord.v1.FlowService/PutFlow", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/GetFlow", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/ListFlows", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/DeleteFlow", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/PutEventRule", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/GetEventRule", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/ListEventRules", OPERATORS),
    Rule::new("/switchbord.v1.FlowService/DeleteEventRule", OPERATORS),
    Rule::new("/switchbord.v1.AccessService/CreateApiKey", ADMIN),
    Rule::new("/switchbord.v1.AccessService/ListApiKeys", ADMIN),
    Rule::new("/switchbord.v1.AccessService/RevokeApiKey", ADMIN),
    Rule::new("/switchbord.v1.AccessService/ListAuditEntries", ADMIN),
];

/// Services anyone may call: health checking and reflection, so that generic tools and load
/// balancers work without a key.
pub const PUBLIC_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// How a request path is protected.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    Public,
    Protected(&'static Rule),
    /// A Switchbord method with no rule: refused.
    NoRule,
    /// Not a Switchbord method: left to the server (which answers UNIMPLEMENTED).
    Unknown,
}

pub fn access_for(path: &str) -> Access {
    if PUBLIC_SERVICES
        .iter()
        .any(|prefix| path.starts_with(prefix))
    {
        return Access::Public;
    }
    match RULES.iter().find(|rule| rule.method == path) {
        Some(rule) => Access::Protected(rule),
        None if path.starts_with("/switchbord.") => Access::NoRule,
        None => Access::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    fn switchbord_methods() -> Vec<String> {
        let descriptors = FileDescriptorSet::decode(switchbord_api::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        descriptors
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service.iter().flat_map(move |service| {
                    let package = package.clone();
                    service.method.iter().map(move |method| {
                        format!("/{package}.{}/{}", service.name(), method.name())
                    })
                })
            })
            .collect()
    }

    #[test]
    fn every_rpc_in_proto_has_a_rule_and_every_rule_an_rpc() {
        let methods = switchbord_methods();
        for method in &methods {
            assert!(
                matches!(access_for(method), Access::Protected(_)),
                "{method} has no access rule in access::rules::RULES"
            );
        }
        for rule in RULES {
            assert!(
                methods.iter().any(|method| method == rule.method),
                "{} is not in proto/",
                rule.method
            );
        }
    }

    #[test]
    fn docs_reproduce_the_table() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/access.md"))
                .expect("docs/access.md exists");
        for rule in RULES {
            let method = rule.method.trim_start_matches("/switchbord.v1.");
            let roles: Vec<&str> = rule.roles.iter().map(|role| role.as_str()).collect();
            let who = match rule.credential {
                Credential::ApiKey => roles.join(", "),
                Credential::EmarsysSecret => "Emarsys shared secret (no API key)".to_owned(),
                Credential::TwentySignature => "Twenty webhook signature (no API key)".to_owned(),
            };
            let row = format!("| `{method}` | {who} |");
            assert!(docs.contains(&row), "docs/access.md lacks the row: {row}");
        }
    }
}
