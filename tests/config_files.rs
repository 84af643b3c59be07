//! The policy files we ship and the JSON Schema stay true to the parser.
//!
//! Every `config/*.toml` and `config/examples/*.toml` must load and validate against
//! `schemas/network-egress.schema.json`; every `config/examples/invalid/*.toml` must be refused by
//! the parser for the reason its header names, and by the schema exactly when its header says so.
//! The schema must know the same keys as the parser at every level, and its patterns must accept
//! and refuse the same sample values. The parser stays authoritative: these tests only keep the
//! schema from drifting away from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use egress_gate::config::{
    self, AuditPath, HostPattern, LoadError, Matcher, Mode, Ports, PrivateIpMode,
};
use serde_json::Value;

const SCHEMA_PATH: &str = "schemas/network-egress.schema.json";
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema() -> Value {
    let path = repo(SCHEMA_PATH);
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema())
        .unwrap_or_else(|e| panic!("{SCHEMA_PATH} does not compile: {e}"))
}

/// The `.toml` files directly in `dir`, sorted. An empty directory fails the test: a check over
/// no files would pass without checking anything.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let path = repo(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{dir} holds no .toml files; nothing would be checked"
    );
    files
}

fn display(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The policy text as the JSON the schema describes.
fn as_json(text: &str) -> Result<Value, String> {
    let value: toml::Value = toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?;
    serde_json::to_value(value).map_err(|e| format!("not representable as JSON: {e}"))
}

/// Every schema violation as `instance-pointer: message`; empty when the document is valid.
fn schema_errors(validator: &jsonschema::Validator, text: &str) -> Vec<String> {
    match as_json(text) {
        Ok(json) => validator
            .iter_errors(&json)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect(),
        Err(e) => vec![e],
    }
}

fn parser_errors(text: &str) -> Vec<String> {
    match config::parse(Path::new("case.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

/// Fails with every problem at once, naming every file that was looked at.
fn report(what: &str, checked: &[String], failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} problem(s)\n  {}\nfiles checked:\n  {}",
        failures.len(),
        failures.join("\n  "),
        checked.join("\n  ")
    );
}

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"], DRAFT_2020_12,
        "{SCHEMA_PATH} must declare draft 2020-12"
    );
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        panic!(
            "{SCHEMA_PATH} violates the draft 2020-12 meta-schema at {}: {e}",
            e.instance_path()
        );
    }
    validator();
}

#[test]
fn shipped_and_example_policies_pass_parser_and_schema() {
    let validator = validator();
    let mut files = toml_files("config");
    files.extend(toml_files("config/examples"));
    for required in [
        "config/egress.toml",
        "config/examples/minimal.toml",
        "config/examples/all-keys.toml",
    ] {
        assert!(files.contains(&repo(required)), "{required} is missing");
    }
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for file in &files {
        let name = display(file);
        if !read(file).starts_with('#') {
            failures.push(format!(
                "{name}: should open with a comment saying what it is for"
            ));
        }
        if let Err(e) = config::load(file) {
            failures.push(format!(
                "{name}: parser refused it:\n    {}",
                e.to_string().replace('\n', "\n    ")
            ));
        }
        for e in schema_errors(&validator, &read(file)) {
            failures.push(format!("{name}: schema refused it: {e}"));
        }
        checked.push(name);
    }
    report("valid policies", &checked, &failures);
}

/// The README runs this file as is, so its security posture is part of the contract.
#[test]
fn shipped_default_is_strict_enforcing_and_loopback_only() {
    let file = repo("config/egress.toml");
    let c = config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.policy.mode, Mode::Enforce);
    assert!(c.policy.strict, "the default must run in strict mode");
    assert_eq!(c.policy.private_ip_mode, PrivateIpMode::Deny);
    assert_eq!(c.proxy.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
    assert_eq!(c.audit.path, AuditPath::File("audit.jsonl".into()));
    assert!(
        c.plugins.is_empty(),
        "plugins in the default are examples, commented out"
    );
    assert!(c.policy.deny.is_empty(), "the default needs no deny rules");
    assert!(!c.policy.allow.is_empty());
    for rule in &c.policy.allow {
        assert!(
            matches!(rule.matcher, Matcher::Host(HostPattern::Exact(_))),
            "{}: the default allows named hosts only, not wildcards or address blocks",
            rule.id
        );
        assert_eq!(
            rule.ports,
            Ports::List(vec![443]),
            "{}: HTTPS only",
            rule.id
        );
    }
}

/// What an invalid sample's header says should happen.
struct Expectation {
    /// Text one parser diagnostic must contain, from `key.path: message`.
    parser: String,
    /// `Some(pointer)`: the schema must refuse the file with an error at that instance pointer.
    /// `None`: the schema cannot express the rule and must accept the file.
    schema_rejects_at: Option<String>,
}

fn expectation(name: &str, text: &str) -> Result<Expectation, String> {
    let header = |key: &str| {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix(key).map(str::trim))
    };
    let parser = header("# parser:").ok_or(format!(
        "{name}: header lacks `# parser: key.path: message`"
    ))?;
    let schema = header("# schema:").ok_or(format!(
        "{name}: header lacks `# schema: rejects at POINTER` or `# schema: accepts (parser-only check)`"
    ))?;
    let schema_rejects_at = match schema {
        "accepts (parser-only check)" => None,
        s => match s.strip_prefix("rejects at ") {
            Some("(root)") => Some(String::new()),
            Some(pointer) => Some(pointer.to_string()),
            None => return Err(format!("{name}: unknown `# schema:` expectation {s:?}")),
        },
    };
    Ok(Expectation {
        parser: parser.to_string(),
        schema_rejects_at,
    })
}

#[test]
fn invalid_examples_are_refused_as_their_headers_say() {
    let validator = validator();
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for file in toml_files("config/examples/invalid") {
        let name = display(&file);
        let text = read(&file);
        checked.push(name.clone());
        let expect = match expectation(&name, &text) {
            Ok(expect) => expect,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };

        match config::load(&file) {
            Ok(_) => failures.push(format!(
                "{name}: parser accepted it; expected `{}`",
                expect.parser
            )),
            Err(LoadError::Read { source, .. }) => {
                failures.push(format!("{name}: unreadable: {source}"))
            }
            Err(LoadError::Invalid(e)) => {
                let wanted = format!(": {}", expect.parser);
                if !e
                    .diagnostics
                    .iter()
                    .any(|d| d.to_string().contains(&wanted))
                {
                    failures.push(format!(
                        "{name}: parser refused it, but not with `{}`:\n    {e}",
                        expect.parser
                    ));
                }
            }
        }

        let errors = match as_json(&text) {
            Ok(json) => validator
                .iter_errors(&json)
                .map(|e| (e.instance_path().as_str().to_string(), e.to_string()))
                .collect::<Vec<_>>(),
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        match (&expect.schema_rejects_at, errors.is_empty()) {
            (None, true) => {}
            (None, false) => failures.push(format!(
                "{name}: header says the schema accepts it, but: {errors:?}"
            )),
            (Some(pointer), true) => failures.push(format!(
                "{name}: schema accepted it; expected an error at {pointer:?}"
            )),
            (Some(pointer), false) => {
                if !errors.iter().any(|(at, _)| at == pointer) {
                    failures.push(format!(
                        "{name}: schema refused it, but not at {pointer:?}: {errors:?}"
                    ));
                }
            }
        }
    }
    report("invalid policies", &checked, &failures);
}

// === keys ===

/// The schema object describing the value at `path`: `[]` steps into array items, `*` into a
/// map's values, anything else into a named property. `$ref`s to `#/$defs/...` are followed.
fn schema_at<'a>(root: &'a Value, path: &[&str]) -> &'a Value {
    let mut node = root;
    for step in path {
        let next = match *step {
            "[]" => node.get("items"),
            "*" => node.get("additionalProperties"),
            name => node.get("properties").and_then(|p| p.get(name)),
        };
        node = resolve(
            root,
            next.unwrap_or_else(|| panic!("schema has nothing at {path:?} (step {step:?})")),
        );
    }
    node
}

/// Follows `$ref`s to `#/$defs/...` until a schema object that is not a reference.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {r}"));
        node = root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    node
}

fn property_names(schema: &Value) -> BTreeSet<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The fields serde says it expected after an unknown one: "expected one of `a`, `b`",
/// "expected `a` or `b`", "expected `a`", or "there are no fields".
fn expected_fields(message: &str) -> Option<BTreeSet<String>> {
    if message.contains("there are no fields") {
        return Some(BTreeSet::new());
    }
    let (_, list) = message.split_once("expected")?;
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// For each table the format has: a policy with an unknown key there, and where that table lives
/// in the schema. The parser's refusal lists the keys it knows at that level.
const KEY_PROBES: &[(&str, &[&str])] = &[
    ("zz_probe = 1\nversion = 1\n", &[]),
    ("version = 1\n[proxy]\nzz_probe = 1\n", &["proxy"]),
    ("version = 1\n[audit]\nzz_probe = 1\n", &["audit"]),
    ("version = 1\n[dns]\nzz_probe = 1\n", &["dns"]),
    ("version = 1\n[limits]\nzz_probe = 1\n", &["limits"]),
    ("version = 1\n[policy]\nzz_probe = 1\n", &["policy"]),
    (
        "version = 1\n[[policy.allow]]\nhost = \"a.example\"\nzz_probe = 1\n",
        &["policy", "allow", "[]"],
    ),
    (
        "version = 1\n[[policy.deny]]\nhost = \"a.example\"\nzz_probe = 1\n",
        &["policy", "deny", "[]"],
    ),
    (
        "version = 1\n[plugins.p]\nzz_probe = 1\n",
        &["plugins", "*"],
    ),
    (
        "version = 1\n[[plugins.p.allow]]\nhost = \"a.example\"\nzz_probe = 1\n",
        &["plugins", "*", "allow", "[]"],
    ),
    (
        "version = 1\n[[plugins.p.deny]]\nhost = \"a.example\"\nzz_probe = 1\n",
        &["plugins", "*", "deny", "[]"],
    ),
];

#[test]
fn schema_and_parser_know_the_same_keys_at_every_level() {
    let schema = schema();
    let mut failures = Vec::new();
    for (text, path) in KEY_PROBES {
        let errors = parser_errors(text);
        let Some(parser_keys) = errors
            .iter()
            .find(|e| e.contains("unknown field `zz_probe`"))
            .and_then(|e| expected_fields(e))
        else {
            failures.push(format!(
                "{path:?}: parser did not list its fields for an unknown key: {errors:?}"
            ));
            continue;
        };
        let schema_keys = property_names(schema_at(&schema, path));
        if parser_keys != schema_keys {
            failures.push(format!(
                "{path:?}: parser knows {parser_keys:?}, schema knows {schema_keys:?}; only in parser: {:?}, only in schema: {:?}",
                parser_keys.difference(&schema_keys).collect::<Vec<_>>(),
                schema_keys.difference(&parser_keys).collect::<Vec<_>>(),
            ));
        }
    }
    report("key sets", &["(inline probes)".to_string()], &failures);
}

/// Where a key is defined: the path from the root, restarting at a `$ref`'s target, so a key of
/// a shared definition (a rule, a plugin) has one name however many places use it:
/// `limits.idle_timeout`, `#/$defs/rule.ports`. `[]` marks array items, `*` map values.
fn key_scope<'a>(root: &'a Value, node: &'a Value, prefix: String) -> (&'a Value, String) {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => (resolve(root, node), format!("{r}.")),
        None => (node, prefix),
    }
}

/// Every key the schema defines.
fn schema_key_paths(root: &Value, node: &Value, prefix: String, out: &mut BTreeSet<String>) {
    let (node, prefix) = key_scope(root, node, prefix);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            out.insert(format!("{prefix}{key}"));
            schema_key_paths(root, sub, format!("{prefix}{key}."), out);
        }
    }
    if let Some(items) = node.get("items") {
        schema_key_paths(root, items, format!("{prefix}[]."), out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        schema_key_paths(root, values, format!("{prefix}*."), out);
    }
}

/// Every key a document uses, named as [`schema_key_paths`] names them. Keys the schema does
/// not know are recorded as `?key` so the comparison shows them.
fn document_key_paths(
    root: &Value,
    node: &Value,
    value: &Value,
    prefix: String,
    out: &mut BTreeSet<String>,
) {
    let (node, prefix) = key_scope(root, node, prefix);
    match value {
        Value::Object(map) => {
            for (key, sub) in map {
                if let Some(sub_schema) = node.get("properties").and_then(|p| p.get(key)) {
                    out.insert(format!("{prefix}{key}"));
                    document_key_paths(root, sub_schema, sub, format!("{prefix}{key}."), out);
                } else if let Some(values) =
                    node.get("additionalProperties").filter(|v| v.is_object())
                {
                    document_key_paths(root, values, sub, format!("{prefix}*."), out);
                } else {
                    out.insert(format!("?{prefix}{key}"));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                document_key_paths(
                    root,
                    node.get("items").unwrap_or(&Value::Null),
                    item,
                    format!("{prefix}[]."),
                    out,
                );
            }
        }
        _ => {}
    }
}

#[test]
fn all_keys_example_uses_every_key_the_schema_defines() {
    let schema = schema();
    let mut defined = BTreeSet::new();
    schema_key_paths(&schema, &schema, String::new(), &mut defined);
    let file = repo("config/examples/all-keys.toml");
    let doc = as_json(&read(&file)).unwrap_or_else(|e| panic!("{}: {e}", display(&file)));
    let mut used = BTreeSet::new();
    document_key_paths(&schema, &schema, &doc, String::new(), &mut used);
    assert!(
        defined.len() > 20,
        "schema walk found too few keys to be believed: {defined:?}"
    );
    assert_eq!(
        used,
        defined,
        "{} should use every key the schema defines; unused: {:?}, unknown to the schema: {:?}",
        display(&file),
        defined.difference(&used).collect::<Vec<_>>(),
        used.difference(&defined).collect::<Vec<_>>()
    );
}

// === values ===

/// Sample policies whose values exercise the schema's patterns and bounds, with whether the parser
/// accepts each. The schema must agree on every one. Known, deliberate gaps (addresses written as
/// hosts, host bits in CIDR blocks, overlapping listeners) are covered by the parser-only samples
/// in `config/examples/invalid/` instead.
const VALUE_CASES: &[(&str, bool)] = &[
    // durations
    ("[limits]\nidle_timeout = \"10s\"", true),
    ("[limits]\nidle_timeout = \"5m\"", true),
    ("[limits]\nidle_timeout = \"1h 30m\"", true),
    ("[limits]\nidle_timeout = \"1h30m\"", true),
    ("[limits]\nidle_timeout = \"500ms\"", true),
    ("[limits]\nidle_timeout = \"1.5h\"", true),
    ("[limits]\nidle_timeout = \"2 days\"", true),
    ("[limits]\nidle_timeout = \"10 s\"", true),
    ("[limits]\nidle_timeout = \"0s\"", false),
    ("[limits]\nidle_timeout = \"0m 0s\"", false),
    ("[limits]\nidle_timeout = \"10\"", false),
    ("[limits]\nidle_timeout = \"10S\"", false),
    ("[limits]\nidle_timeout = \"-5s\"", false),
    ("[limits]\nidle_timeout = \"1.s\"", false),
    ("[limits]\nidle_timeout = \"soon\"", false),
    ("[limits]\nidle_timeout = \"\"", false),
    ("[limits]\nidle_timeout = 10", false),
    // integer bounds
    ("[limits]\nmax_connections = 1", true),
    ("[limits]\nmax_connections = 1000000", true),
    ("[limits]\nmax_connections = 0", false),
    ("[limits]\nmax_connections = 1000001", false),
    ("[limits]\nmax_header_bytes = 8192", true),
    ("[limits]\nmax_header_bytes = 1048576", true),
    ("[limits]\nmax_header_bytes = 8191", false),
    ("[limits]\nmax_header_bytes = 1048577", false),
    // listeners
    (
        "[proxy]\nlisten = [\"0.0.0.0:8080\", \"[::1]:3128\", \"[::ffff:127.0.0.1]:3130\"]",
        true,
    ),
    ("[proxy]\nlisten = []", true),
    ("[proxy]\nlisten = [\"localhost:3128\"]", false),
    ("[proxy]\nlisten = [\"127.0.0.1\"]", false),
    ("[proxy]\nlisten = [\"[::1]\"]", false),
    ("[proxy]\nlisten = [\"::1:3128\"]", false),
    ("[proxy]\nlisten = [\"127.0.0.1:65536\"]", false),
    ("[proxy]\nlisten = [\"01.2.3.4:80\"]", false),
    ("[proxy]\nlisten = \"127.0.0.1:3128\"", false),
    // nameservers
    (
        "[dns]\nnameservers = [\"10.0.0.2\", \"10.0.0.2:53\", \"::1\", \"[::1]:5353\"]",
        true,
    ),
    ("[dns]\nnameservers = [\"[::1]\"]", false),
    ("[dns]\nnameservers = [\"dns.google\"]", false),
    ("[dns]\nnameservers = [\"10.0.0.2:99999\"]", false),
    // audit
    ("[audit]\npath = \"-\"", true),
    ("[audit]\npath = \"\"", false),
    // enums and version
    ("[policy]\nmode = \"report\"", true),
    ("[policy]\nmode = \"Enforce\"", false),
    ("[policy]\nprivate_ip_mode = \"block\"", false),
    ("[policy]\nstrict = \"yes\"", false),
    // rules: hosts
    ("[[policy.allow]]\nhost = \"api.github.com\"", true),
    ("[[policy.allow]]\nhost = \"*.example.com\"", true),
    ("[[policy.allow]]\nhost = \"Bücher.example.\"", true),
    ("[[policy.allow]]\nhost = \"_srv.example\"", true),
    ("[[policy.allow]]\nhost = \"\"", false),
    ("[[policy.allow]]\nhost = \"foo.*.com\"", false),
    ("[[policy.allow]]\nhost = \"*.*.example\"", false),
    ("[[policy.allow]]\nhost = \"*.\"", false),
    ("[[policy.allow]]\nhost = \"a b.example\"", false),
    ("[[policy.allow]]\nhost = \"user@a.example\"", false),
    ("[[policy.allow]]\nhost = \"a.example/path\"", false),
    // rules: address blocks
    ("[[policy.allow]]\ncidr = \"10.0.0.0/8\"", true),
    ("[[policy.allow]]\ncidr = \"10.20.0.5\"", true),
    ("[[policy.allow]]\ncidr = \"2001:db8::/32\"", true),
    ("[[policy.allow]]\ncidr = \"fe80::1\"", true),
    ("[[policy.allow]]\ncidr = \"10.0.0.0/33\"", false),
    ("[[policy.allow]]\ncidr = \"2001:db8::/129\"", false),
    ("[[policy.allow]]\ncidr = \"10.0.0.0/\"", false),
    ("[[policy.allow]]\ncidr = \"example.com\"", false),
    // rules: shape and ports
    (
        "[[policy.allow]]\nhost = \"a.example\"\nports = [1, 65535]",
        true,
    ),
    ("[[policy.allow]]\nhost = \"a.example\"\nports = []", false),
    ("[[policy.allow]]\nhost = \"a.example\"\nports = [0]", false),
    ("[[policy.allow]]\nhost = \"a.example\"\nports = 443", false),
    ("[[policy.allow]]\nports = [443]", false),
    ("[[policy.allow]]\nhost = \"a.example\"\ncomment = 1", false),
    // strict mode, on by default
    ("[[policy.deny]]\nhost = \"*\"", true),
    ("[[policy.deny]]\ncidr = \"0.0.0.0/0\"", true),
    ("[[policy.allow]]\ncidr = \"0.0.0.0/0\"", false),
    ("[[policy.allow]]\ncidr = \"0.0.0.0/00\"", false),
    ("[[policy.allow]]\ncidr = \"::/0\"", false),
    (
        "[policy]\nstrict = true\n[[policy.allow]]\nhost = \"*\"",
        false,
    ),
    ("[plugins.p]\n[[plugins.p.allow]]\nhost = \"*\"", false),
    ("[policy]\nprivate_ip_mode = \"allow\"", false),
    (
        "[policy]\nstrict = false\nprivate_ip_mode = \"allow\"\n[[policy.allow]]\ncidr = \"::/0\"",
        true,
    ),
    (
        "[policy]\nstrict = false\n[plugins.p]\n[[plugins.p.allow]]\nhost = \"*\"",
        true,
    ),
    // plugins
    (
        "[plugins.web-search_2]\nlisten = [\"127.0.0.1:3129\"]",
        true,
    ),
    (
        "[plugins.p]\ntoken_sha256 = \"0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789\"",
        true,
    ),
    (
        "[plugins.p]\ntoken_sha256 = \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\"",
        false,
    ),
    ("[plugins.p]\ntoken_sha256 = \"xyz\"", false),
    ("[plugins.p]\nlisten = [\"127.0.0.1\"]", false),
    ("[plugins.\"\"]", false),
    ("[plugins.\"a.b\"]", false),
    (
        "[plugins.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]",
        true,
    ),
    (
        "[plugins.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]",
        false,
    ),
];

#[test]
fn schema_patterns_accept_and_refuse_what_the_parser_does() {
    let validator = validator();
    let mut failures = Vec::new();
    let mut cases: Vec<(String, bool)> = VALUE_CASES
        .iter()
        .map(|(body, ok)| (format!("version = 1\n{body}\n"), *ok))
        .collect();
    cases.push(("version = 2\n".to_string(), false));
    cases.push(("version = \"1\"\n".to_string(), false));
    for (text, want_ok) in &cases {
        let parser = parser_errors(text);
        let schema = schema_errors(&validator, text);
        let verdict = |errors: &[String]| {
            if errors.is_empty() {
                "accepts"
            } else {
                "refuses"
            }
        };
        if parser.is_empty() != *want_ok || schema.is_empty() != *want_ok {
            failures.push(format!(
                "{text:?}: expected both to {}; parser {} {parser:?}, schema {} {schema:?}",
                if *want_ok { "accept" } else { "refuse" },
                verdict(&parser),
                verdict(&schema),
            ));
        }
    }
    report(
        "sample values",
        &[format!("{} inline samples", cases.len())],
        &failures,
    );
}
