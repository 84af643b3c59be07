//! The policy file exactly as written: serde shapes with spans, unknown keys refused.
//! Values stay as strings and integers here; `config` checks and converts them.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub version: Spanned<i64>,
    pub proxy: Option<RawProxy>,
    pub audit: Option<RawAudit>,
    pub dns: Option<RawDns>,
    pub limits: Option<RawLimits>,
    pub policy: Option<RawPolicy>,
    pub plugins: Option<BTreeMap<String, Spanned<RawPlugin>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub listen: Option<Vec<Spanned<String>>>,
    pub control_uids: Option<Vec<Spanned<i64>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub path: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub fsync: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<i64>>,
    pub keep: Option<Spanned<i64>>,
    pub on_drift: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub connect_timeout: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub mode: Option<Spanned<String>>,
    pub strict: Option<bool>,
    pub private_ip_mode: Option<Spanned<String>>,
    pub allow: Option<Vec<Spanned<RawRule>>>,
    pub deny: Option<Vec<Spanned<RawRule>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub listen: Option<Vec<Spanned<String>>>,
    pub token_sha256: Option<Spanned<String>>,
    pub allow: Option<Vec<Spanned<RawRule>>>,
    pub deny: Option<Vec<Spanned<RawRule>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub host: Option<Spanned<String>>,
    pub cidr: Option<Spanned<String>>,
    pub ports: Option<Spanned<Vec<Spanned<i64>>>>,
    /// Free text for humans; kept so authors can say why a rule exists.
    #[allow(dead_code)]
    pub comment: Option<String>,
}

/// A syntax or shape error: where, under which key, and what.
pub(super) struct RawError {
    pub span: Option<Range<usize>>,
    pub key: String,
    pub message: String,
}

/// Parses the text into the raw shape, remembering the key path of the first error.
pub(super) fn deserialize(text: &str) -> Result<RawFile, RawError> {
    let de = toml::Deserializer::parse(text).map_err(|e| RawError {
        span: e.span(),
        key: String::new(),
        message: e.message().trim().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> shows up as an internal segment in the path; users never wrote it.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        RawError {
            span: inner.span(),
            key: if key == "." { String::new() } else { key },
            message: inner.message().trim().to_string(),
        }
    })
}
