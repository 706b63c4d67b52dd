//! What changes inside an entity, field by field, in the form `cascade admin` prints it:
//! the same names and values as the YAML documents (both come from the entities' serde
//! form). Nested objects are walked (`targeting.countries`); a list that changes is shown
//! whole, before and after.

use cascade_core::entity::Entity;
use serde_json::{Map, Value};

/// One field that differs: absent before (added), absent after (removed), or changed.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange {
    /// Dotted path from the entity's top level, `kind` excluded.
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl std::fmt::Display for FieldChange {
    /// `cpm: "2.00" -> "2.50"`, `+ floor: "0.50"`, `- deal_id: "d-1"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.before, &self.after) {
            (Some(before), Some(after)) => write!(f, "{}: {before} -> {after}", self.path),
            (None, Some(after)) => write!(f, "+ {}: {after}", self.path),
            (Some(before), None) => write!(f, "- {}: {before}", self.path),
            (None, None) => write!(f, "{}", self.path),
        }
    }
}

/// The fields that differ between `before` and `after` (either may be absent: an entity
/// created or removed shows every field), in path order.
pub fn field_changes(before: Option<&Entity>, after: Option<&Entity>) -> Vec<FieldChange> {
    let form = |entity: Option<&Entity>| -> Map<String, Value> {
        match entity.map(serde_json::to_value) {
            Some(Ok(Value::Object(mut fields))) => {
                fields.remove("kind");
                fields
            }
            _ => Map::new(),
        }
    };
    let mut changes = Vec::new();
    walk("", &form(before), &form(after), &mut changes);
    changes
}

fn walk(
    prefix: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    out: &mut Vec<FieldChange>,
) {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (before.get(key), after.get(key)) {
            (Some(Value::Object(b)), Some(Value::Object(a))) => walk(&path, b, a, out),
            (b, a) if b == a => {}
            (b, a) => out.push(FieldChange {
                path,
                before: b.cloned(),
                after: a.cloned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_entities;

    fn entity(yaml: &str) -> Entity {
        parse_entities(yaml).unwrap().remove(0)
    }

    #[test]
    fn a_changed_price_and_a_nested_list_are_named_with_their_values() {
        let before = entity(
            "kind: MediatedBid\nid: b\naccount_id: a\nnetwork_id: n\ncpm: \"2.00\"\ntargeting:\n  countries: [DEU]\n",
        );
        let after = entity(
            "kind: MediatedBid\nid: b\naccount_id: a\nnetwork_id: n\ncpm: \"2.50\"\ntargeting:\n  countries: [DEU, FRA]\n",
        );
        let changes: Vec<String> = field_changes(Some(&before), Some(&after))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "cpm: \"2.00\" -> \"2.50\"",
                "targeting.countries.include: [\"DEU\"] -> [\"DEU\",\"FRA\"]"
            ]
        );
        assert!(field_changes(Some(&before), Some(&before)).is_empty());
    }

    #[test]
    fn a_new_entity_shows_every_field_added() {
        let created = entity("kind: Account\nid: \"8953\"\nparent_id: \"1\"\n");
        let changes = field_changes(None, Some(&created));
        assert!(changes.iter().all(|c| c.before.is_none()));
        assert!(changes.iter().any(|c| c.path == "id"), "{changes:?}");
        assert!(!changes.iter().any(|c| c.path == "kind"));
    }
}
