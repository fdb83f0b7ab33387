//! Whether a flow reached its destination, from what capture saw.
//!
//! In: the flow's state, counters, protocol and which end observed it. Out: a
//! [`Delivery`] and the evidence in words. A record observed at the
//! destination pod's own socket proves delivery whatever its state: the packet
//! got past every filter in front of that pod. Otherwise a refused or
//! unanswered connect was not delivered, a completed handshake or any packet
//! back from the destination was, and anything else (a SYN in flight, UDP
//! with no reply) is not proven either way.

use super::{input::JudgeInput, verdict::Delivery};
use crate::{
    flow::{FlowState, LocalEnd},
    intent::EndKind,
};

/// Delivery and its evidence.
pub(crate) fn delivery(input: &JudgeInput<'_>) -> (Delivery, &'static str) {
    if input.local == LocalEnd::Dst && input.dst.kind == EndKind::Pod {
        return (Delivery::Delivered, "seen at the receiving pod's socket");
    }
    match input.state {
        FlowState::Refused => (Delivery::NotDelivered, "refused"),
        FlowState::Unanswered => (Delivery::NotDelivered, "never answered"),
        FlowState::Established | FlowState::Closed => (Delivery::Delivered, "handshake completed"),
        _ if input.to_src.packets > 0 => (Delivery::Delivered, "replies came back"),
        _ => (Delivery::Unproven, "no reply seen"),
    }
}
