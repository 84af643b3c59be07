//! A proxy listening on an unspecified address (`0.0.0.0`) is reachable on its port through every
//! address of the machine, not only loopback; none of them may be dialed. Run in a network
//! namespace this test creates (`unshare -rn`), where the public-looking 8.8.8.8 is made an
//! address of the namespace's own loopback interface: nothing leaves the namespace.

mod support;

use std::process::Command;

use support::process::BIN;

/// What curl saw for one request through the proxy: `STATUS REASON` (REASON `-` when absent).
fn outcome(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{label}=")))
        .unwrap_or_else(|| panic!("no {label}= line in {stdout:?}"))
        .trim()
        .to_string()
}

#[test]
fn a_wildcard_listener_is_never_dialed_through_another_local_address() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[audit]\npath = \"{}\"\n\
             [[policy.allow]]\ncidr = \"8.8.8.8/32\"\nports = [3128]\n\
             [[policy.allow]]\ncidr = \"8.8.4.4/32\"\nports = [3128]\n",
            dir.path().join("audit.jsonl").display()
        ),
    )
    .unwrap();
    // `ask LABEL ARGS…`: one curl through the proxy, printed as `LABEL=STATUS REASON`.
    let script = format!(
        r#"
set -eu
ip link set lo up
ip addr add 8.8.8.8/32 dev lo
"{bin}" serve --config "{policy}" --listen 0.0.0.0:3128 2>"{dir}/proxy.log" &
proxy=$!
trap 'kill $proxy 2>/dev/null || true' EXIT
i=0
until curl -s -o /dev/null http://127.0.0.1:3128/; do
  i=$((i+1)); [ $i -lt 200 ] || {{ echo "proxy did not start"; exit 1; }}; sleep 0.05
done
ask() {{
  label=$1; shift
  head=$(curl -s -o /dev/null -D - --max-time 10 -x http://127.0.0.1:3128 "$@" || true)
  status=$(printf '%s\n' "$head" | awk 'NR==1 {{print $2}}')
  reason=$(printf '%s\n' "$head" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-egress-gate-reason" {{print $2; exit}}')
  echo "$label=${{status:-none}} ${{reason:--}}"
}}
ask plain http://8.8.8.8:3128/
ask tunnel -p http://8.8.8.8:3128/
ask elsewhere http://8.8.4.4:3128/
"#,
        bin = BIN,
        policy = policy.display(),
        dir = dir.path().display(),
    );
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "namespace script failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 8.8.8.8 is this namespace's own address: on port 3128 it is the proxy itself.
    assert_eq!(
        outcome(&stdout, "plain"),
        "403 non_public_address",
        "{stdout}"
    );
    assert_eq!(
        outcome(&stdout, "tunnel"),
        "403 non_public_address",
        "{stdout}"
    );
    // The same rule for an address that is not local is allowed and dialed (and fails: the
    // namespace has no route out), so the refusal above is about the address being local.
    assert_eq!(
        outcome(&stdout, "elsewhere"),
        "502 connect_failed",
        "{stdout}"
    );
    let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !trail.contains("\"connected\":\"8.8.8.8:3128\""),
        "the proxy dialed itself: {trail}"
    );
}
