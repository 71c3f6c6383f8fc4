//! The reports of the gateways that follow this node.

use std::time::Duration;

use crate::node::host::Host;
use crate::pb;

/// A gateway that has not reported for this long is forgotten.
pub const GATEWAY_FORGET_AFTER: Duration = Duration::from_secs(600);
/// Gateways a node keeps reports of.
pub const GATEWAYS_MAX: usize = 4096;

impl Host {
    /// Keeps a gateway's latest report (at most [`GATEWAYS_MAX`] gateways:
    /// past that the stalest is forgotten, so reports under made-up ids
    /// cannot grow a node's memory without bound).
    pub fn gateway_reported(&self, report: pb::GatewayReport) {
        let mut gateways = self.gateways.lock().expect("gateways lock");
        if !gateways.contains_key(&report.gateway_id) && gateways.len() >= GATEWAYS_MAX {
            let stalest = gateways.iter().min_by_key(|(_, (_, at))| *at).map(|(id, _)| id.clone());
            if let Some(id) = stalest {
                gateways.remove(&id);
            }
        }
        gateways.insert(report.gateway_id.clone(), (report, std::time::Instant::now()));
    }

    /// The gateways that reported here within [`GATEWAY_FORGET_AFTER`],
    /// with how long ago.
    pub fn gateways(&self) -> Vec<(pb::GatewayReport, Duration)> {
        let mut gateways = self.gateways.lock().expect("gateways lock");
        gateways.retain(|_, (_, at)| at.elapsed() < GATEWAY_FORGET_AFTER);
        gateways.values().map(|(report, at)| (report.clone(), at.elapsed())).collect()
    }
}
