#!/bin/sh
# Network namespaces for the NAT tests (tests/nat.rs): a "public" namespace P (the Tier-1
# node), two home routers RA and RB doing NAT with nftables, and one host behind each (A, B).
#
#   A 10.77.1.2 -- 10.77.1.1 RA 198.18.1.2 -- 198.18.1.1  P  198.18.2.1 -- 198.18.2.2 RB 10.77.2.1 -- 10.77.2.2 B
#
# The routers masquerade outgoing traffic and silently drop unsolicited incoming connections,
# as home routers do. With a rate, every link crossing the "internet" (both directions of
# P-RA and P-RB) is shaped with tc tbf.
#
# Usage: nat_netns.sh up PREFIX [RATE]   (RATE like 40mbit; none: unshaped)
#        nat_netns.sh down PREFIX
set -eu
cmd=$1
x=$2
P=${x}p RA=${x}ra RB=${x}rb A=${x}a B=${x}b

if [ "$cmd" = down ]; then
    for n in $A $B $RA $RB $P; do ip netns del "$n" 2>/dev/null || true; done
    exit 0
fi

rate=${3:-}
for n in $P $RA $RB $A $B; do
    ip netns add "$n"
    ip -n "$n" link set lo up
done
ip link add va0 netns $P type veth peer name va1 netns $RA
ip link add vb0 netns $P type veth peer name vb1 netns $RB
ip link add la0 netns $RA type veth peer name la1 netns $A
ip link add lb0 netns $RB type veth peer name lb1 netns $B

addr() { ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" link set "$2" up; }
addr $P va0 198.18.1.1/24
addr $P vb0 198.18.2.1/24
addr $RA va1 198.18.1.2/24
addr $RA la0 10.77.1.1/24
addr $RB vb1 198.18.2.2/24
addr $RB lb0 10.77.2.1/24
addr $A la1 10.77.1.2/24
addr $B lb1 10.77.2.2/24
ip -n $A route add default via 10.77.1.1
ip -n $B route add default via 10.77.2.1
ip -n $RA route add default via 198.18.1.1
ip -n $RB route add default via 198.18.2.1
for n in $P $RA $RB; do ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1; done

router() {
    ip netns exec "$1" nft -f - <<EOF
table ip nat {
    chain postrouting { type nat hook postrouting priority 100; oifname "$2" masquerade; }
}
table inet filter {
    chain forward_filter {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "$3" accept
    }
    chain input_filter {
        type filter hook input priority 0; policy accept;
        iifname "$2" ct state new drop
    }
}
EOF
}
router $RA va1 la0
router $RB vb1 lb0

if [ -n "$rate" ]; then
    for d in "$P va0" "$P vb0" "$RA va1" "$RB vb1"; do
        set -- $d
        ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst 64kb latency 200ms
    done
fi
