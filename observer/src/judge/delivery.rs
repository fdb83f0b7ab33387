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
    flow::{FlowState, LocalEnd, Traffic},
    inventory::EndpointKind,
};

/// What capture saw that decides delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    AtReceiver,
    Refused,
    NeverAnswered,
    Handshake,
    Replies,
    NoReply,
}

impl Proof {
    /// How many kinds of proof there are.
    pub(crate) const KINDS: usize = 6;

    /// The proof a flow observed at `local` with the destination a pod or
    /// not, in `state`, with `to_src` traffic back, gives.
    pub(crate) fn of(local: LocalEnd, dst_is_pod: bool, state: FlowState, to_src: Traffic) -> Self {
        if local == LocalEnd::Dst && dst_is_pod {
            return Self::AtReceiver;
        }
        match state {
            FlowState::Refused => Self::Refused,
            FlowState::Unanswered => Self::NeverAnswered,
            FlowState::Established | FlowState::Closed => Self::Handshake,
            _ if to_src.packets > 0 => Self::Replies,
            _ => Self::NoReply,
        }
    }

    /// Delivery and its evidence in words.
    fn delivery(self) -> (Delivery, &'static str) {
        match self {
            Self::AtReceiver => (Delivery::Delivered, "seen at the receiving pod's socket"),
            Self::Refused => (Delivery::NotDelivered, "refused"),
            Self::NeverAnswered => (Delivery::NotDelivered, "never answered"),
            Self::Handshake => (Delivery::Delivered, "handshake completed"),
            Self::Replies => (Delivery::Delivered, "replies came back"),
            Self::NoReply => (Delivery::Unproven, "no reply seen"),
        }
    }
}

/// Delivery and its evidence.
pub(crate) fn delivery(input: &JudgeInput<'_>) -> (Delivery, &'static str) {
    Proof::of(input.local, input.dst.kind == EndpointKind::Pod, input.state, input.to_src).delivery()
}
