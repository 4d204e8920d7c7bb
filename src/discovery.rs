//! Finding the other nodes of the site on the LAN by multicast DNS (mdns-sd).
//!
//! Each node registers one `_lanmirror._udp.local.` service named by its node id, on its QUIC
//! port, with TXT records `id` (node id), `site` (site id), `v` (protocol version) and `http`
//! (HTTP port); it browses the same type and feeds what it hears into [`Peers`]. mdns-sd fires
//! `ServiceResolved` more than once per service (as addresses and TXT change), each with the
//! addresses it knows now, so an entry (by service name) takes the latest advert's addresses
//! instead of piling them up; a browse channel that closes silently (mdns-sd drops slow
//! receivers) is re-opened. Anyone on the LAN can send adverts and goodbyes, so [`Peers`]
//! never lets one close a live, admitted connection: a removal or expiry drops an entry only
//! once it has no connection, and the table is capped.
//!
//! Not here: static peers (`[discovery] peers`, handled by [`Peers`] directly), connecting, or
//! admission. TXT records are unauthenticated: they only say where to dial and which id to pin;
//! the site key decides admission.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::peer::{NodeId, Peers, wire};

pub const SERVICE_TYPE: &str = "_lanmirror._udp.local.";

/// What an advertisement says, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub id: NodeId,
    pub http_port: u16,
}

/// Checks a resolved service's TXT records: same protocol version and site, a well-formed id.
/// `None` for anything else (another site, another version, garbage).
pub fn read_advert(site_id: &str, get: impl Fn(&str) -> Option<String>) -> Option<Advert> {
    if get("v")?.parse::<u32>().ok()? != wire::VERSION || get("site")? != site_id {
        return None;
    }
    Some(Advert {
        id: NodeId::parse(&get("id")?)?,
        http_port: get("http")?.parse().ok()?,
    })
}

/// Registers this node and browses for the others until `stop` turns true.
pub async fn run(peers: Arc<Peers>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let daemon = match ServiceDaemon::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "mDNS unavailable; only static peers ([discovery] peers) will be used");
            return;
        }
    };
    let me = peers.me.to_string();
    let host = format!("lanmirror-{}.local.", &me[..12]);
    let http = peers.http_port().to_string();
    let props = [
        ("id", me.as_str()),
        ("site", peers.site.site_id.as_str()),
        ("v", &wire::VERSION.to_string()),
        ("http", http.as_str()),
    ];
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        &me,
        &host,
        "",
        peers.quic_addr().port(),
        &props[..],
    )
    .map(|i| i.enable_addr_auto());
    let fullname = match info {
        Ok(info) => {
            let name = info.get_fullname().to_string();
            if let Err(e) = daemon.register(info) {
                tracing::warn!(error = %e, "cannot announce this node by mDNS; other nodes will not find it unless they list it in [discovery] peers");
            }
            Some(name)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the mDNS announcement");
            None
        }
    };
    tracing::info!(
        service = SERVICE_TYPE,
        "mDNS: announcing this node and looking for the site's other nodes"
    );
    'browse: loop {
        let rx = match daemon.browse(SERVICE_TYPE) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, "mDNS browse failed; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue 'browse,
                    _ = stop.changed() => break 'browse,
                }
            }
        };
        loop {
            let ev = tokio::select! {
                ev = rx.recv_async() => ev,
                _ = stop.changed() => break 'browse,
            };
            match ev {
                Ok(ServiceEvent::ServiceResolved(s)) => {
                    let Some(ad) = read_advert(&peers.site.site_id, |k| {
                        s.txt_properties.get_property_val_str(k).map(str::to_string)
                    }) else {
                        tracing::debug!(name = %s.fullname, "ignoring an mDNS service of another site or version");
                        continue;
                    };
                    let addrs: Vec<SocketAddr> = s
                        .addresses
                        .iter()
                        .map(|a| SocketAddr::new(a.to_ip_addr(), s.port))
                        .collect();
                    peers.upsert_mdns(&s.fullname, ad.id, addrs, ad.http_port);
                }
                Ok(ServiceEvent::ServiceRemoved(_, name)) => peers.remove_mdns(&name),
                Ok(_) => {}
                Err(_) => {
                    // mdns-sd closes the channel of a receiver it thinks is slow: browse again.
                    tracing::debug!("mDNS browse channel closed; browsing again");
                    let _ = daemon.stop_browse(SERVICE_TYPE);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'browse;
                }
            }
        }
    }
    if let Some(name) = fullname {
        let _ = daemon.unregister(&name);
    }
    if let Ok(done) = daemon.shutdown() {
        let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adverts_of_other_sites_versions_or_garbage_are_ignored() {
        let id = "00112233445566778899aabbccddeeff";
        let txt = |v: &'static str, site: &'static str, id: &'static str, http: &'static str| {
            move |k: &str| {
                Some(
                    match k {
                        "v" => v,
                        "site" => site,
                        "id" => id,
                        "http" => http,
                        _ => return None,
                    }
                    .to_string(),
                )
            }
        };
        let ok = read_advert("s1", txt("2", "s1", id, "7700")).unwrap();
        assert_eq!(ok.http_port, 7700);
        assert_eq!(ok.id.to_string(), id);
        assert_eq!(read_advert("s2", txt("2", "s1", id, "7700")), None);
        assert_eq!(
            read_advert("s1", txt("1", "s1", id, "7700")),
            None,
            "old protocol"
        );
        assert_eq!(read_advert("s1", txt("3", "s1", id, "7700")), None);
        assert_eq!(read_advert("s1", txt("2", "s1", "xyz", "7700")), None);
        assert_eq!(read_advert("s1", txt("2", "s1", id, "99999")), None);
        assert_eq!(read_advert("s1", |_| None), None);
    }
}
