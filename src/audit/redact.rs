//! Redaction of secrets before anything reaches the audit trail or the logs. Owns the list of
//! secret-looking query keys; the proxy never records header values or URL userinfo at all.

/// Query keys (compared lower-case, as substrings) whose values are never recorded.
const SECRET_KEY_PARTS: &[&str] = &[
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "auth",
    "session",
    "credential",
    "jwt",
    "bearer",
    "cookie",
    "code",
    "otp",
    "nonce",
];

/// Placeholder written instead of a secret value.
pub const REDACTED: &str = "REDACTED";

/// Returns `path?query` with the values of secret-looking query keys replaced by `REDACTED`.
/// Fragments never reach a proxy, so only the query is considered.
pub fn redact_path_and_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_values_are_redacted_and_others_kept() {
        assert_eq!(redact_path_and_query("/a/b"), "/a/b");
        assert_eq!(
            redact_path_and_query(
                "/x?q=weather&api_key=s3cr3t&Access_Token=t0k&page=2&sig=abc&flag"
            ),
            "/x?q=weather&api_key=REDACTED&Access_Token=REDACTED&page=2&sig=REDACTED&flag"
        );
        assert_eq!(
            redact_path_and_query("/?password=hunter2"),
            "/?password=REDACTED"
        );
    }
}
