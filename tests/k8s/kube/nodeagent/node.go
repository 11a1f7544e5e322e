package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/klog/v2"
)

const heartbeatEvery = 20 * time.Second

func (a *agent) nodeStatus() corev1.NodeStatus {
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	return corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "causeway lab node agent is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: a.cfg.nodeIP},
			{Type: corev1.NodeHostName, Address: a.cfg.nodeName},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(a.cfg.kubeletPort)}},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion: a.cfg.version, OperatingSystem: "linux", Architecture: "amd64",
			ContainerRuntimeVersion: "causeway-lab://netns", OSImage: "causeway lab node agent",
			KernelVersion: kernelVersion(),
		},
	}
}

// registerNode creates the Node (or takes over one left by an earlier run) and posts its status.
func (a *agent) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: a.cfg.nodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": a.cfg.nodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: a.cfg.podCIDR, PodCIDRs: []string{a.cfg.podCIDR}},
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("registering node %s: %w", a.cfg.nodeName, err)
		}
		klog.InfoS("waiting for the API server to register the node", "err", err)
		time.Sleep(time.Second)
	}
	return a.postNodeStatus(ctx)
}

func (a *agent) postNodeStatus(ctx context.Context) error {
	current, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.nodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	current.Status = a.nodeStatus()
	_, err = a.client.CoreV1().Nodes().UpdateStatus(ctx, current, metav1.UpdateOptions{})
	return err
}

func (a *agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := a.postNodeStatus(ctx); err != nil && ctx.Err() == nil {
				klog.ErrorS(err, "posting node status")
			}
		}
	}
}

// serveKubelet serves the kubelet's exec endpoint on nodeIP:kubeletPort inside the gateway
// namespace, over TLS, to clients with a certificate from --client-ca (the API server's
// --kubelet-client-certificate).
func (a *agent) serveKubelet(ctx context.Context) error {
	cert, err := tls.LoadX509KeyPair(a.cfg.tlsCert, a.cfg.tlsKey)
	if err != nil {
		return fmt.Errorf("loading the kubelet serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(a.cfg.clientCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no certificate", a.cfg.clientCA)
	}
	addr := net.JoinHostPort(a.cfg.nodeIP, fmt.Sprint(a.cfg.kubeletPort))
	l, err := listenIn(a.gw, addr)
	if err != nil {
		return fmt.Errorf("binding the kubelet port %s in %s: %w", addr, a.gw, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/", a.handleExec)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	srv := &http.Server{
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.ServeTLS(l, "", ""); err != nil && err != http.ErrServerClosed {
			klog.ErrorS(err, "kubelet port stopped")
		}
	}()
	return nil
}

// handleExec answers /exec/{namespace}/{pod}/{container} (and /exec/{ns}/{pod}/{uid}/{container}).
func (a *agent) handleExec(w http.ResponseWriter, req *http.Request) {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(req.URL.Path, "/exec/"), "/"), "/")
	var namespace, pod, uid, container string
	switch len(parts) {
	case 3:
		namespace, pod, container = parts[0], parts[1], parts[2]
	case 4:
		namespace, pod, uid, container = parts[0], parts[1], parts[2], parts[3]
	default:
		http.Error(w, "expected /exec/{namespace}/{pod}/{container}", http.StatusNotFound)
		return
	}
	opts, err := remotecommandserver.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := req.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "no command", http.StatusBadRequest)
		return
	}
	sb := a.sandboxByName(namespace, pod)
	if sb == nil || (uid != "" && types.UID(uid) != sb.uid) {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on this node", namespace, pod), http.StatusNotFound)
		return
	}
	if _, ok := sb.containers[container]; !ok {
		http.Error(w, fmt.Sprintf("pod %s/%s has no container %s", namespace, pod, container), http.StatusNotFound)
		return
	}
	klog.InfoS("exec", "pod", namespace+"/"+pod, "container", container, "command", cmd)
	remotecommandserver.ServeExec(w, req, &netnsExecutor{netns: sb.netns, hostname: pod}, pod, string(sb.uid), container, cmd, opts,
		4*time.Hour, remotecommandserver.DefaultStreamCreationTimeout, remotecommandserver.SupportedStreamingProtocols)
}

func kernelVersion() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
