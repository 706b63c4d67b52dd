//! Entities as YAML documents, the form `cascade admin` reads and prints: one entity per
//! document, `kind` naming its type. Pure, so that any text a user may hand the CLI can be
//! fuzzed through it.

use cascade_core::entity::Entity;
use serde::Deserialize as _;

#[derive(Debug, thiserror::Error)]
#[error("document {document}: {source}")]
pub struct YamlError {
    /// 1-based, as an editor counts.
    pub document: usize,
    #[source]
    pub source: yaml_serde::Error,
}

/// Every non-empty YAML document of `text` as an entity.
pub fn parse_entities(text: &str) -> Result<Vec<Entity>, YamlError> {
    let mut entities = Vec::new();
    for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let error = |source| YamlError {
            document: i + 1,
            source,
        };
        let value = yaml_serde::Value::deserialize(document).map_err(error)?;
        if value.is_null() {
            continue;
        }
        entities.push(yaml_serde::from_value(value).map_err(error)?);
    }
    Ok(entities)
}

/// `entities` as YAML documents, `---` between them.
pub fn to_yaml(entities: &[Entity]) -> Result<String, yaml_serde::Error> {
    let documents: Vec<String> = entities
        .iter()
        .map(yaml_serde::to_string)
        .collect::<Result<_, _>>()?;
    Ok(documents.join("---\n"))
}
