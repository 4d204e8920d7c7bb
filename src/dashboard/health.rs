//! Is this node, and its site, healthy, and if not why: a pure reading of the `/api/status`
//! document, put back into it as `health` so that scripts, the page and `lanmirror status`
//! agree.
//!
//! `health` is `{node, site, problems, other_warnings}`: `node` and `site` are `ok`, `warn`
//! or `bad` (the worst problem of that scope); each problem is `{code, scope, level, …}`
//! with the values its message needs (`repo`, `free_bytes`, …: the message catalogs say
//! `problem.<code>.text` and what to do, `problem.<code>.fix`). `other_warnings` are the
//! status' `warnings` this module has no code for, as the node wrote them (English).
//!
//! Not problems: a repo no client asked for yet, metadata older than the freshness window on
//! a node nobody uses (it is checked when asked for), a site of one node.

use serde_json::{Map, Value, json};

/// Metadata unconfirmed by upstream for longer than this is a problem.
pub const LISTS_OLD_SECS: u64 = 24 * 3600;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Bad,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Bad => "bad",
        }
    }
}

struct Problems(Vec<(Level, &'static str, Value)>);

impl Problems {
    fn add(&mut self, level: Level, scope: &'static str, code: &str, args: Value) {
        let mut p = Map::new();
        p.insert("code".into(), json!(code));
        p.insert("scope".into(), json!(scope));
        p.insert("level".into(), json!(level.name()));
        if let Value::Object(a) = args {
            p.extend(a);
        }
        self.0.push((level, scope, Value::Object(p)));
    }

    fn worst(&self, scope: &str) -> Level {
        self.0
            .iter()
            .filter(|(_, s, _)| *s == scope)
            .map(|(l, _, _)| *l)
            .max()
            .unwrap_or(Level::Ok)
    }
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// A peer's name on the page: its node id's first 12 hex digits, else its address.
pub fn peer_name(p: &Value) -> String {
    match p["id"].as_str() {
        Some(id) => id.chars().take(12).collect(),
        None => p["addr"].as_str().unwrap_or("?").to_string(),
    }
}

/// Adds to each peer of the status' `peers` its `state` (`healthy`, `aside`: put aside for a
/// while, `down`) and `last_contact_secs` (since its last uplink announcement, about once a
/// second while connected; null: never heard), from `heard` (node id, how long ago).
pub fn peer_states(peers: &mut Value, heard: &[(String, std::time::Duration)]) {
    for p in peers.as_array_mut().into_iter().flatten() {
        let state = if p["healthy"] == true {
            "healthy"
        } else if u(&p["put_aside_secs"]).is_some_and(|s| s > 0) {
            "aside"
        } else {
            "down"
        };
        let ago = p["id"]
            .as_str()
            .and_then(|id| heard.iter().find(|(k, _)| k == id))
            .map(|(_, d)| d.as_secs());
        p["state"] = json!(state);
        p["last_contact_secs"] = json!(ago);
    }
}

/// The warnings of `status.warnings` that a problem code here stands for (the site-key ones
/// `node.rs` writes).
fn known_warning(w: &str) -> bool {
    w.starts_with("no site key")
}

/// The `health` part of the status document `st`.
pub fn assess(st: &Value) -> Value {
    let mut p = Problems(Vec::new());
    for r in st["repos"].as_array().into_iter().flatten() {
        let repo = r["name"].as_str().unwrap_or("?");
        if r["upstream_offline"] == true {
            p.add(
                Level::Warn,
                "node",
                "upstream_offline",
                json!({"repo": repo}),
            );
        }
        for s in r["snapshots"].as_array().into_iter().flatten() {
            let tree = s["tree"].as_str().unwrap_or("");
            if s["confirmed_upstream"] == false {
                p.add(
                    Level::Warn,
                    "node",
                    "unconfirmed",
                    json!({"repo": repo, "tree": tree, "source": s["source"]}),
                );
            } else if let Some(age) = u(&s["checked_secs_ago"]).filter(|a| *a > LISTS_OLD_SECS) {
                p.add(
                    Level::Warn,
                    "node",
                    "lists_old",
                    json!({"repo": repo, "tree": tree, "age_secs": age}),
                );
            }
        }
    }
    let store = &st["store"];
    if store["passthrough"] == true {
        p.add(Level::Bad, "node", "store_passthrough", json!({}));
    }
    if let (Some(free), Some(min)) = (u(&store["free_bytes"]), u(&store["min_free"]))
        && free < min
    {
        p.add(
            Level::Bad,
            "node",
            "disk_low",
            json!({"free_bytes": free, "min_free_bytes": min}),
        );
    }
    let budget = &st["uplink"]["budget"];
    if budget["spent"] == true {
        p.add(
            Level::Warn,
            "site",
            "budget_spent",
            json!({
                "used_bytes": budget["used"],
                "limit_bytes": budget["limit"],
                "resets_date": budget["resets_on"],
            }),
        );
    }
    if st["site_key"] == false {
        let code = if st["trust_lan"] == true {
            "trust_lan_open"
        } else {
            "no_site_key"
        };
        p.add(Level::Warn, "site", code, json!({}));
    }
    for peer in st["peers"].as_array().into_iter().flatten() {
        if peer["healthy"] == true {
            continue;
        }
        let args = json!({"peer": peer_name(peer), "addr": peer["addr"]});
        if u(&peer["put_aside_secs"]).is_some_and(|s| s > 0) {
            p.add(Level::Warn, "site", "peer_aside", args);
        } else {
            p.add(Level::Warn, "site", "peer_down", args);
        }
    }
    if let Some(n) = u(&st["uplink"]["peers_silent"]).filter(|n| *n > 0) {
        p.add(Level::Warn, "site", "peers_silent", json!({"count": n}));
    }
    let other: Vec<Value> = st["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w.as_str().is_some_and(|w| !known_warning(w)))
        .cloned()
        .collect();
    let node = p.worst("node");
    let site = p.worst("site").max(node);
    let mut list: Vec<_> = p.0;
    // The worst first; otherwise in the order found.
    list.sort_by_key(|(l, _, _)| std::cmp::Reverse(*l));
    json!({
        "node": node.name(),
        "site": site.name(),
        "problems": list.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        "other_warnings": (!other.is_empty()).then_some(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Value {
        json!({
            "repos": [{"name": "almalinux", "upstream_offline": false, "snapshots": [
                {"tree": "9/BaseOS/x86_64/os/", "checked_secs_ago": 30, "confirmed_upstream": true, "source": "upstream"}
            ]}],
            "store": {"passthrough": false, "free_bytes": 5_000_000_000u64, "min_free": 1_073_741_824u64},
            "uplink": {"budget": {"spent": false}, "peers_silent": 0},
            "site_key": true,
            "peers": [{"id": "ab12cd34ef56ab12cd34", "addr": "192.0.2.7:7701", "healthy": true}],
            "warnings": [],
        })
    }

    fn codes(h: &Value) -> Vec<&str> {
        h["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["code"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_working_node_and_site_have_no_problems() {
        let h = assess(&healthy());
        assert_eq!(h["node"], "ok");
        assert_eq!(h["site"], "ok");
        assert!(codes(&h).is_empty(), "{h}");
        // No repos used yet, no peers: still healthy.
        let h = assess(&json!({"repos": [{"name": "x", "snapshots": []}], "site_key": true}));
        assert_eq!(
            (h["node"].as_str(), h["site"].as_str()),
            (Some("ok"), Some("ok"))
        );
    }

    #[test]
    fn each_problem_says_its_scope_level_and_values() {
        let mut st = healthy();
        st["repos"][0]["upstream_offline"] = json!(true);
        st["store"]["passthrough"] = json!(true);
        st["store"]["free_bytes"] = json!(1000);
        st["peers"][0]["healthy"] = json!(false);
        st["site_key"] = json!(false);
        st["warnings"] = json!(["no site key: any host…", "something new"]);
        let h = assess(&st);
        assert_eq!(h["node"], "bad");
        assert_eq!(h["site"], "bad", "the site is as bad as its node");
        let c = codes(&h);
        assert_eq!(
            c[..2],
            ["store_passthrough", "disk_low"],
            "worst first: {h}"
        );
        assert!(c.contains(&"upstream_offline") && c.contains(&"peer_down"));
        assert!(c.contains(&"no_site_key"));
        let low = &h["problems"][1];
        assert_eq!(low["free_bytes"], 1000);
        assert_eq!(low["min_free_bytes"], 1_073_741_824u64);
        assert_eq!(low["scope"], "node");
        let down = h["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["code"] == "peer_down")
            .unwrap();
        assert_eq!(down["peer"], "ab12cd34ef56");
        assert_eq!(down["scope"], "site");
        assert_eq!(h["other_warnings"], json!(["something new"]));
    }

    #[test]
    fn site_problems_leave_the_node_healthy() {
        let mut st = healthy();
        st["uplink"]["peers_silent"] = json!(2);
        st["uplink"]["budget"] =
            json!({"spent": true, "used": 10, "limit": 10, "resets_on": "2026-06-01"});
        let h = assess(&st);
        assert_eq!(h["node"], "ok");
        assert_eq!(h["site"], "warn");
        assert_eq!(codes(&h), ["budget_spent", "peers_silent"]);
        assert_eq!(h["problems"][0]["resets_date"], "2026-06-01");
    }

    #[test]
    fn peers_get_a_state_and_their_last_contact() {
        let mut peers = json!([
            {"id": "aa", "healthy": true},
            {"id": "bb", "healthy": false, "put_aside_secs": 30},
            {"id": null, "healthy": false, "put_aside_secs": null},
        ]);
        peer_states(
            &mut peers,
            &[("aa".into(), std::time::Duration::from_millis(2500))],
        );
        assert_eq!(peers[0]["state"], "healthy");
        assert_eq!(peers[0]["last_contact_secs"], 2);
        assert_eq!(peers[1]["state"], "aside");
        assert_eq!(peers[1]["last_contact_secs"], Value::Null);
        assert_eq!(peers[2]["state"], "down");
    }

    #[test]
    fn old_or_unconfirmed_metadata_is_a_warning() {
        let mut st = healthy();
        st["repos"][0]["snapshots"][0]["checked_secs_ago"] = json!(LISTS_OLD_SECS + 1);
        assert_eq!(codes(&assess(&st)), ["lists_old"]);
        st["repos"][0]["snapshots"][0]["confirmed_upstream"] = json!(false);
        st["repos"][0]["snapshots"][0]["source"] = json!("site");
        let h = assess(&st);
        assert_eq!(codes(&h), ["unconfirmed"]);
        assert_eq!(h["problems"][0]["source"], "site");
    }
}
