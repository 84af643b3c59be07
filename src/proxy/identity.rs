//! Who is asking: the plugin identity of a request.
//!
//! A connection that arrived on a plugin's listener is that plugin, whatever it sends. On an
//! anonymous listener a `Proxy-Authorization: Basic NAME:TOKEN` header may name a plugin; the
//! token is checked against the policy's `token_sha256` in constant time. The header value is
//! never logged, recorded or forwarded.

use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use http::header::PROXY_AUTHORIZATION;

use super::respond::ProxyError;
use crate::policy::Policy;

/// The plugin a request acts for, if any.
pub fn identify(
    listener_plugin: Option<&Arc<str>>,
    headers: &HeaderMap,
    policy: &Policy,
) -> Result<Option<Arc<str>>, ProxyError> {
    if let Some(plugin) = listener_plugin {
        // A reload may have removed the plugin: its listener then carries no capabilities at
        // all, rather than falling back to the global rules.
        if !policy.has_plugin(plugin) {
            return Err(ProxyError::UnknownPlugin);
        }
        return Ok(Some(plugin.clone()));
    }
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(auth_error("more than one Proxy-Authorization header"));
    }
    let (user, token) = parse_basic(value.as_bytes())
        .ok_or_else(|| auth_error("Proxy-Authorization must be Basic PLUGIN:TOKEN"))?;
    policy
        .authenticate(&user, &token)
        .map_err(|_| auth_error("unknown plugin or wrong token"))?;
    Ok(Some(Arc::from(user)))
}

fn auth_error(detail: &'static str) -> ProxyError {
    ProxyError::ProxyAuth { detail }
}

/// Splits `Basic base64(user:token)` into its parts.
fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_split_at_the_first_colon() {
        // "weather:to:ken"
        assert_eq!(
            parse_basic(b"Basic d2VhdGhlcjp0bzprZW4="),
            Some(("weather".to_string(), b"to:ken".to_vec()))
        );
        assert_eq!(
            parse_basic(b"basic   d2VhdGhlcjp0bzprZW4=  "),
            Some(("weather".to_string(), b"to:ken".to_vec()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        // "nocolon"
        assert_eq!(parse_basic(b"Basic bm9jb2xvbg=="), None);
    }
}
