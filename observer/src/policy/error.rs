//! Why a NetworkPolicy could not be compiled.
//!
//! In: the problems validation finds while compiling. Out: errors naming the
//! policy, its position in the input and the offending field, worded after the
//! API server's own validation messages.

use super::cidr::CidrError;

/// A NetworkPolicy the engine refused, as the API server would have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {namespace}/{name}: {field}: {problem}")]
pub struct PolicyError {
    /// Position of the policy in the slice given to compile, to find where it came from.
    pub index: usize,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Path of the offending field, for example `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// One validation failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `metadata.name` absent or empty.
    #[error("required")]
    MissingName,
    /// A `cidr` or `except` that does not parse.
    #[error("invalid CIDR {value:?}: {reason}")]
    InvalidCidr {
        /// The text given.
        value: String,
        /// Why it does not parse.
        reason: CidrError,
    },
    /// An `except` entry not strictly inside its `cidr`.
    #[error("{except} must be a strict subset of cidr {cidr}")]
    ExceptOutsideCidr {
        /// The block's `cidr`.
        cidr: String,
        /// The offending `except` entry.
        except: String,
    },
    /// A numeric `port` or `endPort` outside 1-65535.
    #[error("{value} must be between 1 and 65535")]
    PortOutOfRange {
        /// The number given.
        value: i32,
    },
    /// A named `port` that is not a valid IANA service name.
    #[error("{value:?} is not a valid port name (1-15 lowercase letters, digits and '-', at least one letter)")]
    InvalidPortName {
        /// The name given.
        value: String,
    },
    /// `endPort` without a numeric `port`.
    #[error("endPort may not be set when port is absent or a named port")]
    EndPortWithoutNumericPort,
    /// `endPort` smaller than `port`.
    #[error("endPort {end_port} must be greater than or equal to port {port}")]
    EndPortBelowPort {
        /// `port`.
        port: i32,
        /// `endPort`.
        end_port: i32,
    },
    /// A protocol other than TCP, UDP and SCTP.
    #[error("unsupported protocol {value:?}: must be TCP, UDP or SCTP")]
    UnsupportedProtocol {
        /// The protocol given.
        value: String,
    },
    /// A `policyTypes` entry other than Ingress and Egress.
    #[error("unsupported policy type {value:?}: must be Ingress or Egress")]
    UnsupportedPolicyType {
        /// The type given.
        value: String,
    },
    /// More than two `policyTypes`.
    #[error("may not specify more than two policyTypes")]
    TooManyPolicyTypes,
    /// A peer with none of `ipBlock`, `podSelector` and `namespaceSelector`.
    #[error("must specify a peer")]
    EmptyPeer,
    /// A peer with `ipBlock` and a selector.
    #[error("may not specify both ipBlock and another peer")]
    IpBlockWithSelector,
    /// A selector operator other than In, NotIn, Exists and DoesNotExist.
    #[error("unsupported operator {operator:?}: must be In, NotIn, Exists or DoesNotExist")]
    UnsupportedOperator {
        /// The operator given.
        operator: String,
    },
    /// `In` or `NotIn` with no values.
    #[error("operator {operator} needs at least one value")]
    MissingValues {
        /// The operator.
        operator: String,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error("operator {operator} takes no values")]
    UnexpectedValues {
        /// The operator.
        operator: String,
    },
}
