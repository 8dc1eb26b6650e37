use std::collections::HashMap;

/// Who caused an event and in answer to what. Stored with every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub actor_id: String,
    /// `patient`, `provider`, `admin`, `auditor`, or `system` for the engine's own work.
    pub actor_role: String,
    /// Ties together everything done for one user intent, across services.
    pub correlation_id: String,
    /// The request or event that directly caused this one.
    pub causation_id: String,
    /// The HTTP request that carried the command, if any.
    pub request_id: String,
}

impl Metadata {
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            ("actor_id".to_owned(), self.actor_id.clone()),
            ("actor_role".to_owned(), self.actor_role.clone()),
            ("correlation_id".to_owned(), self.correlation_id.clone()),
            ("causation_id".to_owned(), self.causation_id.clone()),
            ("request_id".to_owned(), self.request_id.clone()),
        ])
    }
}
