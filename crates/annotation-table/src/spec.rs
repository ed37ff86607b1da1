//! The table definitions, read from `schemas/*.json`: the annotation journal, the current-state
//! table with its tombstones (see [`crate::state`]), and the object journal.

use std::collections::HashMap;
use std::sync::OnceLock;

use iceberg::spec::{FormatVersion, Schema, SortOrder, UnboundPartitionSpec};
use serde::Deserialize;

use crate::TableError;

const SPEC_JSON: &str = include_str!("../../../schemas/annotation_journal.json");
const STATE_JSON: &str = include_str!("../../../schemas/annotations.json");
const TOMBSTONES_JSON: &str = include_str!("../../../schemas/annotations_tombstones.json");
const OBJECT_JOURNAL_JSON: &str = include_str!("../../../schemas/object_journal.json");

/// A table's definition: schema, partition spec, sort order and properties.
#[derive(Debug, Clone)]
pub struct JournalSpec {
    /// Default table name.
    pub table: String,
    /// Iceberg format version.
    pub format_version: FormatVersion,
    /// The schema.
    pub schema: Schema,
    /// The partition spec.
    pub partition_spec: UnboundPartitionSpec,
    /// The sort order files are written in.
    pub sort_order: SortOrder,
    /// Table properties set at creation.
    pub properties: HashMap<String, String>,
}

#[derive(Deserialize)]
struct SpecFile {
    table: String,
    #[serde(rename = "format-version")]
    format_version: u8,
    schema: Schema,
    #[serde(rename = "partition-spec")]
    partition_spec: UnboundPartitionSpec,
    #[serde(rename = "sort-order")]
    sort_order: SortOrder,
    properties: HashMap<String, String>,
}

/// The journal definition embedded from `schemas/annotation_journal.json`.
pub fn journal_spec() -> Result<&'static JournalSpec, TableError> {
    static SPEC: OnceLock<Result<JournalSpec, String>> = OnceLock::new();
    SPEC.get_or_init(|| parse(SPEC_JSON))
        .as_ref()
        .map_err(|e| TableError::SpecInvalid(e.clone()))
}

/// The current-state table's definition, from `schemas/annotations.json`.
pub fn state_spec() -> Result<&'static JournalSpec, TableError> {
    static SPEC: OnceLock<Result<JournalSpec, String>> = OnceLock::new();
    SPEC.get_or_init(|| parse(STATE_JSON))
        .as_ref()
        .map_err(|e| TableError::SpecInvalid(format!("schemas/annotations.json: {e}")))
}

/// The tombstones table's definition, from `schemas/annotations_tombstones.json`.
pub fn tombstones_spec() -> Result<&'static JournalSpec, TableError> {
    static SPEC: OnceLock<Result<JournalSpec, String>> = OnceLock::new();
    SPEC.get_or_init(|| parse(TOMBSTONES_JSON))
        .as_ref()
        .map_err(|e| TableError::SpecInvalid(format!("schemas/annotations_tombstones.json: {e}")))
}

/// The object journal's definition, from `schemas/object_journal.json`.
pub fn object_journal_spec() -> Result<&'static JournalSpec, TableError> {
    static SPEC: OnceLock<Result<JournalSpec, String>> = OnceLock::new();
    SPEC.get_or_init(|| parse(OBJECT_JOURNAL_JSON))
        .as_ref()
        .map_err(|e| TableError::SpecInvalid(format!("schemas/object_journal.json: {e}")))
}

fn parse(text: &str) -> Result<JournalSpec, String> {
    let file: SpecFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let format_version = match file.format_version {
        1 => FormatVersion::V1,
        2 => FormatVersion::V2,
        3 => FormatVersion::V3,
        v => return Err(format!("unknown format-version {v}")),
    };
    // Bind once here so a spec that does not fit the schema fails at start-up, not at write.
    file.partition_spec
        .clone()
        .bind(file.schema.clone())
        .map_err(|e| format!("partition-spec: {e}"))?;
    Ok(JournalSpec {
        table: file.table,
        format_version,
        schema: file.schema,
        partition_spec: file.partition_spec,
        sort_order: file.sort_order,
        properties: file.properties,
    })
}

impl JournalSpec {
    /// Compares an existing table's schema with ours: same field names, types and
    /// required-ness, in order. Returns the first difference.
    pub fn schema_difference(&self, existing: &Schema) -> Option<String> {
        let ours = self.schema.as_struct().fields();
        let theirs = existing.as_struct().fields();
        for (i, want) in ours.iter().enumerate() {
            let Some(got) = theirs.get(i) else {
                return Some(format!("column {} `{}` is missing", i + 1, want.name));
            };
            if got.name != want.name
                || got.field_type != want.field_type
                || got.required != want.required
            {
                return Some(format!(
                    "column {} is `{}` {}{}, expected `{}` {}{}",
                    i + 1,
                    got.name,
                    got.field_type,
                    if got.required { " required" } else { "" },
                    want.name,
                    want.field_type,
                    if want.required { " required" } else { "" },
                ));
            }
        }
        theirs
            .get(ours.len())
            .map(|extra| format!("it has an extra column `{}`", extra.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_spec_is_valid_and_matches_the_design() {
        let spec = journal_spec().unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = spec
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "bucket",
                "object_key",
                "object_version_id",
                "object_join_key",
                "name",
                "record_type",
                "sequence_number",
                "last_modified_date",
                "size",
                "e_tag",
                "checksum_algorithm",
                "replication_status",
                "text_value",
                "event_name",
                "event_time",
                "source",
                "requester",
                "source_ip_address",
                "request_id",
                "ingested_at",
                "annotation_hash",
                "object_version_hash"
            ]
        );
        assert_eq!(spec.format_version, FormatVersion::V2);
        assert_eq!(spec.schema_difference(&spec.schema), None);
    }

    #[test]
    fn the_state_table_has_exactly_the_aws_columns_with_the_journal_types() {
        let journal = journal_spec().unwrap_or_else(|e| panic!("{e}"));
        let state = state_spec().unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = state
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "bucket",
                "object_key",
                "object_version_id",
                "object_join_key",
                "name",
                "sequence_number",
                "last_modified_date",
                "size",
                "e_tag",
                "checksum_algorithm",
                "replication_status",
                "text_value"
            ]
        );
        for field in state.schema.as_struct().fields() {
            let theirs = journal
                .schema
                .field_by_name(&field.name)
                .unwrap_or_else(|| panic!("{} is not a journal column", field.name));
            assert_eq!(
                (&field.field_type, field.required),
                (&theirs.field_type, theirs.required),
                "{}",
                field.name
            );
        }
        let tombstones = tombstones_spec().unwrap_or_else(|e| panic!("{e}"));
        for field in tombstones.schema.as_struct().fields() {
            assert!(
                journal.schema.field_by_name(&field.name).is_some(),
                "{}",
                field.name
            );
        }
        assert_eq!(state.partition_spec, tombstones.partition_spec);
    }

    #[test]
    fn differences_are_named() {
        let spec = journal_spec().unwrap_or_else(|e| panic!("{e}"));
        let other = Schema::builder()
            .with_fields(spec.schema.as_struct().fields()[..3].to_vec())
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let diff = spec.schema_difference(&other).unwrap_or_default();
        assert!(diff.contains("object_join_key"), "{diff}");
    }
}
