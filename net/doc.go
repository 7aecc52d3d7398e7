// Package net gives an init's child containers their network: lo in every
// new network namespace; for `network = "veth"` a bridge per init (nest0)
// on a /24 of its own, one veth pair per container with the container's
// end made and configured directly in its namespace, addresses leased by
// name and persisted, outbound NAT and published ports with nftables, and
// the hosts and resolv.conf files a container's init writes for itself.
//
// Everything goes through netlink (vishvananda/netlink for links,
// addresses and routes; google/nftables for rules) on handles bound to the
// namespace they act on: nothing here depends on which network namespace
// the calling thread is in, and nothing shells out to ip or nft.
//
// It never writes into a container's file system: the parent hands the
// container's init a Config over the link, and the init writes its own
// files (EtcFiles).
//
// Importers alias it (nestnet) because it uses the standard library's net
// itself.
package net
