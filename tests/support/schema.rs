#![allow(dead_code)]
//! Validates audit records against `schemas/audit-event.schema.json`. The harness runs every
//! record any test reads through here, so the schema is checked against everything the suite
//! makes the proxy write.

use std::sync::OnceLock;

use serde_json::Value;

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/audit-event.schema.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::draft202012::meta::validate(&schema)
            .expect("audit schema is valid draft 2020-12");
        jsonschema::draft202012::new(&schema).expect("audit schema compiles")
    })
}

/// Panics with every schema error if `record` does not match its event's schema.
pub fn check_record(record: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "audit record does not match the schema:\n{record}\n{errors:#?}"
    );
}

/// Parses a whole trail (complete lines only), checking every record.
pub fn check_trail(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            check_record(&value);
            value
        })
        .collect()
}
