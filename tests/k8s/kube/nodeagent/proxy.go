package main

// A kube-proxy stand-in: the cluster's Service IPs as nftables DNAT in the gateway namespace
// (which every pod routes through and where the tunnel delivers), as kube-proxy's nftables mode
// does and as netlab's nat.rs does for the file-source lab: a packet for VIP:port goes to one of
// the service's ready endpoints (from the EndpointSlices labelled kubernetes.io/service-name,
// which includes the MCS slices behind a ServiceImport's derived Service), picked per connection
// by `numgen random`. A port without endpoints is rejected, not leaked onto the default route.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// proxyTable is the nftables table the agent owns in the gateway namespace.
const proxyTable = "kube_proxy"

type vipRule struct {
	vip       string
	port      int32
	protocol  string   // tcp or udp
	endpoints []string // "addr . port"
}

func (a *agent) runProxy(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(a.client, 0)
	services := factory.Core().V1().Services()
	slices := factory.Discovery().V1().EndpointSlices()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke}
	services.Informer().AddEventHandler(handler)
	slices.Informer().AddEventHandler(handler)
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), services.Informer().HasSynced, slices.Informer().HasSynced) {
		return ctx.Err()
	}
	go func() {
		last := ""
		for {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			// Let a burst of changes settle into one transaction.
			time.Sleep(50 * time.Millisecond)
			svcs, _ := services.Lister().List(labels.Everything())
			all, _ := slices.Lister().List(labels.Everything())
			script := nftScript(vipRules(svcs, all))
			if script == last {
				continue
			}
			if err := a.loadNft(script); err != nil {
				klog.ErrorS(err, "loading service rules")
				poke(nil)
				time.Sleep(time.Second)
				continue
			}
			last = script
		}
	}()
	return nil
}

func vipRules(services []*corev1.Service, slices []*discoveryv1.EndpointSlice) []vipRule {
	var rules []vipRule
	for _, svc := range services {
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			proto := strings.ToLower(string(sp.Protocol))
			if proto == "" {
				proto = "tcp"
			}
			if proto != "tcp" && proto != "udp" {
				continue
			}
			seen := map[string]bool{}
			var eps []string
			for _, sl := range slices {
				if sl.Namespace != svc.Namespace || sl.Labels[discoveryv1.LabelServiceName] != svc.Name ||
					sl.AddressType != discoveryv1.AddressTypeIPv4 {
					continue
				}
				var port int32 = -1
				for _, p := range sl.Ports {
					name := ""
					if p.Name != nil {
						name = *p.Name
					}
					if name == sp.Name && p.Port != nil {
						port = *p.Port
					}
				}
				if port < 0 {
					continue
				}
				for _, e := range sl.Endpoints {
					if e.Conditions.Ready != nil && !*e.Conditions.Ready {
						continue
					}
					for _, addr := range e.Addresses {
						if net.ParseIP(addr).To4() == nil {
							continue
						}
						ep := fmt.Sprintf("%s . %d", addr, port)
						if !seen[ep] {
							seen[ep] = true
							eps = append(eps, ep)
						}
					}
				}
			}
			sort.Strings(eps)
			for _, vip := range svc.Spec.ClusterIPs {
				if net.ParseIP(vip).To4() != nil {
					rules = append(rules, vipRule{vip: vip, port: sp.Port, protocol: proto, endpoints: eps})
				}
			}
		}
	}
	sort.Slice(rules, func(i, j int) bool {
		if rules[i].vip != rules[j].vip {
			return rules[i].vip < rules[j].vip
		}
		if rules[i].port != rules[j].port {
			return rules[i].port < rules[j].port
		}
		return rules[i].protocol < rules[j].protocol
	})
	return rules
}

// nftScript replaces the table in one transaction (add then delete makes the delete succeed
// whether or not it existed).
func nftScript(rules []vipRule) string {
	var dnat, reject strings.Builder
	for _, r := range rules {
		match := fmt.Sprintf("ip daddr %s %s dport %d", r.vip, r.protocol, r.port)
		if len(r.endpoints) == 0 {
			fmt.Fprintf(&reject, "    %s reject with icmp type host-unreachable\n", match)
			continue
		}
		m := make([]string, len(r.endpoints))
		for i, e := range r.endpoints {
			m[i] = fmt.Sprintf("%d : %s", i, e)
		}
		fmt.Fprintf(&dnat, "    %s dnat ip to numgen random mod %d map { %s }\n", match, len(r.endpoints), strings.Join(m, ", "))
	}
	return fmt.Sprintf("add table ip %[1]s\ndelete table ip %[1]s\ntable ip %[1]s {\n"+
		"  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n%[2]s  }\n"+
		"  chain output {\n    type nat hook output priority -100; policy accept;\n%[2]s  }\n"+
		"  chain forward {\n    type filter hook forward priority 0; policy accept;\n%[3]s  }\n"+
		"  chain local {\n    type filter hook output priority 0; policy accept;\n%[3]s  }\n}\n",
		proxyTable, dnat.String(), reject.String())
}

func (a *agent) loadNft(script string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", filepath.Base(a.gw), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft -f in %s: %w: %s", a.gw, err, strings.TrimSpace(out.String()))
	}
	return nil
}
