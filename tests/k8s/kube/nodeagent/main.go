// Command nodeagent stands in for a kubelet in causeway's kube lab (netlab --kube), where no
// kubelet or container runtime can run. The network it gives pods is real; what runs in them
// is a table of known images (see behaviour.go).
//
// For one lab cluster it:
//   - registers a Node (InternalIP = the cluster gateway's pod-bridge address, the kubelet port,
//     a pod CIDR) and keeps its Ready condition fresh;
//   - binds pending pods to that Node (there is no scheduler);
//   - gives each pod a network namespace with a veth on the cluster's pod bridge and an address
//     from the pod range, a default route and a resolv.conf pointing at the cluster's DNS;
//   - starts what each container's image stands for inside that namespace, and reports the real
//     status: Running, podIP(s), and Ready from a readiness check against those processes;
//   - serves the kubelet's exec endpoint, so `kubectl exec` (proxied by the API server) runs the
//     command inside the pod's namespace;
//   - tears down and force-deletes terminating pods;
//   - stands in for kube-proxy: Service IPs as nftables DNAT in the gateway namespace (proxy.go).
//
// It also forwards a loopback port of the host's network namespace to the API server, which
// listens inside the cluster's gateway namespace, so that kubectl on the host reaches it.
//
// It runs in the host's network and mount namespaces (so that the namespaces it adds with
// `ip netns add` are visible to everyone) and opens its sockets inside the gateway namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

type config struct {
	kubeconfig  string
	nodeName    string
	nodeIP      string
	kubeletPort int
	tlsCert     string
	tlsKey      string
	clientCA    string
	gwNetns     string
	podCIDR     string
	firstPodIP  string
	lastPodIP   string
	bridge      string
	podNsPrefix string
	dns         string
	causewayBin string
	apiForward  string
	apiTarget   string
	version     string
}

func main() {
	var c config
	flag.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (its server is reached inside --gw-netns)")
	flag.StringVar(&c.nodeName, "node-name", "", "the Node to register")
	flag.StringVar(&c.nodeIP, "node-ip", "", "the Node's InternalIP: where the kubelet port listens, inside --gw-netns")
	flag.IntVar(&c.kubeletPort, "kubelet-port", 10250, "the kubelet (exec) port")
	flag.StringVar(&c.tlsCert, "tls-cert", "", "serving certificate of the kubelet port")
	flag.StringVar(&c.tlsKey, "tls-key", "", "its key")
	flag.StringVar(&c.clientCA, "client-ca", "", "CA that signs the API server's kubelet client certificate")
	flag.StringVar(&c.gwNetns, "gw-netns", "", "the cluster's gateway network namespace (a name under /run/netns)")
	flag.StringVar(&c.podCIDR, "pod-cidr", "", "the Node's pod CIDR")
	flag.StringVar(&c.firstPodIP, "first-pod-ip", "", "first address handed to pods")
	flag.StringVar(&c.lastPodIP, "last-pod-ip", "", "last address handed to pods")
	flag.StringVar(&c.bridge, "bridge", "pods0", "the pod bridge inside --gw-netns")
	flag.StringVar(&c.podNsPrefix, "pod-netns-prefix", "", "pod namespaces are named PREFIX<n>")
	flag.StringVar(&c.dns, "dns", "", "the pods' nameserver (and default gateway)")
	flag.StringVar(&c.causewayBin, "causeway", "", "the causeway binary (its `lab http-serve` answers for HTTP images)")
	flag.StringVar(&c.apiForward, "api-forward", "", "host loopback address to forward to --api-target inside --gw-netns (for kubectl)")
	flag.StringVar(&c.apiTarget, "api-target", "127.0.0.1:6443", "the API server's address inside --gw-netns")
	flag.StringVar(&c.version, "kubelet-version", "v0.0.0", "the kubeletVersion the Node reports")
	klog.InitFlags(nil)
	flag.Parse()
	for name, v := range map[string]string{"kubeconfig": c.kubeconfig, "node-name": c.nodeName, "node-ip": c.nodeIP,
		"tls-cert": c.tlsCert, "tls-key": c.tlsKey, "client-ca": c.clientCA, "gw-netns": c.gwNetns, "pod-cidr": c.podCIDR,
		"first-pod-ip": c.firstPodIP, "last-pod-ip": c.lastPodIP, "pod-netns-prefix": c.podNsPrefix, "dns": c.dns, "causeway": c.causewayBin} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "nodeagent: --%s is required\n", name)
			os.Exit(2)
		}
	}
	if err := run(c); err != nil {
		klog.ErrorS(err, "nodeagent stopped")
		os.Exit(1)
	}
}

func run(c config) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	gw := netnsPath(c.gwNetns)

	if c.apiForward != "" {
		if err := startForward(ctx, c.apiForward, gw, c.apiTarget); err != nil {
			return err
		}
	}

	rest, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", c.kubeconfig, err)
	}
	// The API server listens inside the gateway namespace.
	rest.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		return dialIn(ctx, gw, network, address)
	}
	rest.QPS, rest.Burst = 50, 100
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	pool, err := newIPPool(c.firstPodIP, c.lastPodIP)
	if err != nil {
		return err
	}
	a := &agent{
		cfg:       c,
		client:    client,
		gw:        gw,
		pool:      pool,
		sandboxes: map[string]*sandbox{},
	}
	if err := a.removeLeftoverNamespaces(); err != nil {
		return err
	}
	if err := a.registerNode(ctx); err != nil {
		return err
	}
	if err := a.serveKubelet(ctx); err != nil {
		return err
	}
	if err := a.runProxy(ctx); err != nil {
		return err
	}
	go a.heartbeat(ctx)
	klog.InfoS("node agent running", "node", c.nodeName, "nodeIP", c.nodeIP, "kubeletPort", c.kubeletPort)
	err = a.runPods(ctx)
	a.teardownAll()
	return err
}

// netnsPath is where `ip netns add NAME` mounts a namespace.
func netnsPath(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	return "/run/netns/" + name
}

// backoff returns min(2^n * base, max).
func backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		return max
	}
	return d
}
