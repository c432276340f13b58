//! The kernel data path, privileged (root: CAP_BPF, CAP_NET_ADMIN; CI runs them): the programs
//! under BPF_PROG_TEST_RUN, pinned maps, XDP on veths, real TCP through network namespaces, and
//! the agent process on the kernel path.

mod agent_netns;
mod agent_node;
mod cluster;
mod coexist_netns;
mod l4_cluster;
mod l4_icmp;
mod l4_icmp_netns;
mod l4_netns;
mod l4_snat;
mod l4_snat_netns;
mod l4_test_run;
mod pinned_maps;
mod support;
mod tls_netns;
mod xdp_parse;
mod xdp_veth;
