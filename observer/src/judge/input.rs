//! What the judge is given about one flow.
//!
//! In: the flow record's facts (addresses, protocol, state, counters, which
//! end observed it) and the two resolved ends. Out: a [`JudgeInput`] of plain
//! borrowed values, so the judge is driven the same way by the pipeline and by
//! tests.

use std::time::SystemTime;

use crate::{
    flow::{FlowRecord, FlowState, LocalEnd, Protocol, Traffic},
    intent::FlowEnd,
};

/// One flow to judge.
#[derive(Clone, Copy, Debug)]
pub struct JudgeInput<'a> {
    /// The initiator.
    pub src: FlowEnd<'a>,
    /// The responder.
    pub dst: FlowEnd<'a>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Where the flow stands.
    pub state: FlowState,
    /// Traffic from src to dst.
    pub to_dst: Traffic,
    /// Traffic from dst to src.
    pub to_src: Traffic,
    /// Which end this node observed: `Dst` means the record came from the
    /// receiving pod's socket, which proves delivery.
    pub local: LocalEnd,
    /// The flow's first packet.
    pub first_seen: SystemTime,
    /// Whether this is the first time this flow is judged: new connections are
    /// counted against intent rate limits only then.
    pub new_flow: bool,
    /// The destination the source asked for (a Service's ClusterIP, a
    /// redirected address), when `dst` is the backend it was sent to
    /// instead: intents match either.
    pub asked: Option<FlowEnd<'a>>,
}

impl<'a> JudgeInput<'a> {
    /// The input for a flow record whose ends enrichment resolved; the ends'
    /// addresses and ports should be the record's (`dst`'s its backend's,
    /// when it has one).
    pub fn from_record(record: &'a FlowRecord, src: FlowEnd<'a>, dst: FlowEnd<'a>, new_flow: bool) -> Self {
        // What the socket saw, when enrichment put the backend at `dst`.
        let asked = record
            .dst
            .backend
            .as_ref()
            .map(|backend| FlowEnd::from_endpoint(&backend.asked, None, record.dst.ip, record.dst.port));
        Self {
            src,
            dst,
            protocol: record.protocol,
            state: record.state,
            to_dst: record.to_dst,
            to_src: record.to_src,
            local: record.local,
            first_seen: record.first_seen,
            new_flow,
            asked,
        }
    }
}
