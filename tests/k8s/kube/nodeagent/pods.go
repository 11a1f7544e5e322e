package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/klog/v2"
	utilexec "k8s.io/utils/exec"
)

// How often each running pod's processes and readiness are checked.
const checkEvery = time.Second

type agent struct {
	cfg    config
	client kubernetes.Interface
	gw     string
	pool   *ipPool

	mu        sync.Mutex
	sandboxes map[string]*sandbox // by namespace/name
	nextNs    int
	lister    func(namespace, name string) (*corev1.Pod, error)
	queue     workqueue.TypedRateLimitingInterface[string]
}

// sandbox is one pod's network namespace and the processes of its containers.
type sandbox struct {
	uid        types.UID
	namespace  string
	name       string
	netns      string
	hostVeth   string
	ip         net.IP
	started    metav1.Time
	containers map[string]*container
	order      []string
	stop       context.CancelFunc
	done       chan struct{}
}

type container struct {
	spec     corev1.Container
	b        behaviour
	procs    []*exec.Cmd
	exited   []chan struct{}
	started  metav1.Time
	restarts int32
	ready    bool
	lastExit *corev1.ContainerStateTerminated
}

func key(namespace, name string) string { return namespace + "/" + name }

func (a *agent) sandboxByName(namespace, name string) *sandbox {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sandboxes[key(namespace, name)]
}

// removeLeftoverNamespaces deletes pod namespaces an earlier run of this agent left behind.
func (a *agent) removeLeftoverNamespaces() error {
	names, err := listNetns()
	if err != nil {
		return err
	}
	for _, n := range names {
		if strings.HasPrefix(n, a.cfg.podNsPrefix) {
			a.deleteNetns(n)
		}
	}
	return nil
}

func (a *agent) runPods(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(a.client, 0)
	pods := factory.Core().V1().Pods()
	a.queue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(k)
		}
	}
	pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	})
	lister := pods.Lister()
	a.lister = func(namespace, name string) (*corev1.Pod, error) { return lister.Pods(namespace).Get(name) }
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced) {
		return ctx.Err()
	}
	go func() {
		<-ctx.Done()
		a.queue.ShutDown()
	}()
	for {
		k, shutdown := a.queue.Get()
		if shutdown {
			return nil
		}
		if err := a.reconcile(ctx, k); err != nil {
			klog.ErrorS(err, "reconciling pod", "pod", k)
			a.queue.AddRateLimited(k)
		} else {
			a.queue.Forget(k)
		}
		a.queue.Done(k)
	}
}

func (a *agent) reconcile(ctx context.Context, k string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return nil
	}
	pod, err := a.lister(namespace, name)
	if apierrors.IsNotFound(err) {
		a.teardown(k)
		return nil
	}
	if err != nil {
		return err
	}
	sb := a.sandboxByName(namespace, name)
	if sb != nil && sb.uid != pod.UID {
		a.teardown(k) // a new pod with the same name
		sb = nil
	}
	switch {
	case pod.Spec.NodeName == "":
		if pod.Spec.SchedulerName != "" && pod.Spec.SchedulerName != corev1.DefaultSchedulerName {
			return nil
		}
		return a.bind(ctx, pod)
	case pod.Spec.NodeName != a.cfg.nodeName:
		return nil
	case pod.DeletionTimestamp != nil:
		a.teardown(k)
		zero := int64(0)
		err := a.client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("force-deleting %s: %w", k, err)
		}
		return nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return nil
	case sb == nil:
		return a.start(ctx, pod)
	}
	return nil
}

func (a *agent) bind(ctx context.Context, pod *corev1.Pod) error {
	err := a.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: a.cfg.nodeName},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("binding %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	klog.InfoS("bound pod", "pod", key(pod.Namespace, pod.Name), "node", a.cfg.nodeName)
	return nil
}

// start builds the pod's namespace, starts its containers and its status loop.
func (a *agent) start(ctx context.Context, pod *corev1.Pod) error {
	a.mu.Lock()
	a.nextNs++
	n := a.nextNs
	addr, err := a.pool.take()
	a.mu.Unlock()
	if err != nil {
		return err
	}
	sb := &sandbox{
		uid: pod.UID, namespace: pod.Namespace, name: pod.Name,
		netns:      fmt.Sprintf("%s%d", a.cfg.podNsPrefix, n),
		hostVeth:   fmt.Sprintf("k%d", n),
		ip:         addr,
		started:    metav1.Now(),
		containers: map[string]*container{},
		done:       make(chan struct{}),
	}
	if err := a.buildNetns(sb); err != nil {
		a.deleteNetns(sb.netns)
		a.mu.Lock()
		a.pool.release(addr)
		a.mu.Unlock()
		return err
	}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		ct := &container{spec: *c, b: behaviourFor(c)}
		sb.containers[c.Name] = ct
		sb.order = append(sb.order, c.Name)
		klog.InfoS("starting container", "pod", key(pod.Namespace, pod.Name), "container", c.Name, "image", c.Image, "runs", ct.b.what)
		a.startContainer(sb, ct)
	}
	wctx, cancel := context.WithCancel(ctx)
	sb.stop = cancel
	a.mu.Lock()
	a.sandboxes[key(pod.Namespace, pod.Name)] = sb
	a.mu.Unlock()
	go a.podLoop(wctx, sb, pod.Spec.RestartPolicy)
	return nil
}

func (a *agent) buildNetns(sb *sandbox) error {
	prefixLen := 24
	if _, cidr, err := net.ParseCIDR(a.cfg.podCIDR); err == nil {
		prefixLen, _ = cidr.Mask.Size()
	}
	steps := [][]string{
		{"netns", "add", sb.netns},
		{"-n", sb.netns, "link", "set", "lo", "up"},
		{"-n", filepath.Base(a.gw), "link", "add", sb.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", sb.netns},
		{"-n", filepath.Base(a.gw), "link", "set", sb.hostVeth, "master", a.cfg.bridge, "up"},
		{"-n", sb.netns, "addr", "add", fmt.Sprintf("%s/%d", sb.ip, prefixLen), "dev", "eth0"},
		{"-n", sb.netns, "link", "set", "eth0", "up"},
		{"-n", sb.netns, "route", "add", "default", "via", a.cfg.dns},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	etc := filepath.Join("/etc/netns", sb.netns)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	// The cluster's DNS is the gateway's, which serves svc.global and svc.clusterset.local
	// only (no cluster.local): no search list, so names are asked as written.
	resolv := fmt.Sprintf("nameserver %s\noptions timeout:1 attempts:2\n", a.cfg.dns)
	return os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte(resolv), 0o644)
}

func (a *agent) deleteNetns(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := ip("netns", "del", name); err != nil {
		klog.V(2).InfoS("deleting namespace", "netns", name, "err", err)
	}
	os.RemoveAll(filepath.Join("/etc/netns", name))
}

func (a *agent) startContainer(sb *sandbox, c *container) {
	c.procs, c.exited = nil, nil
	c.started = metav1.Now()
	c.ready = false
	var argvs [][]string
	if len(c.b.httpPorts) == 0 {
		argvs = append(argvs, []string{"sleep", "infinity"})
	}
	for _, p := range c.b.httpPorts {
		argvs = append(argvs, []string{a.cfg.causewayBin, "lab", "http-serve", "--listen", fmt.Sprintf("0.0.0.0:%d", p), "--body", sb.name})
	}
	for _, argv := range argvs {
		cmd := exec.Command("ip", append([]string{"netns", "exec", sb.netns}, argv...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		done := make(chan struct{})
		if err := cmd.Start(); err != nil {
			klog.ErrorS(err, "starting container process", "pod", key(sb.namespace, sb.name), "container", c.spec.Name)
			close(done)
		} else {
			go func() { cmd.Wait(); close(done) }()
		}
		c.procs = append(c.procs, cmd)
		c.exited = append(c.exited, done)
	}
}

func (c *container) alive() bool {
	for _, d := range c.exited {
		select {
		case <-d:
			return false
		default:
		}
	}
	return len(c.exited) > 0
}

func (c *container) kill() {
	for i, cmd := range c.procs {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-c.exited[i]:
			case <-time.After(2 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-c.exited[i]
			}
		}
	}
}

// podLoop checks the containers every second: restarts exited processes (by restart policy),
// runs the readiness checks and writes the pod's status when it changed.
func (a *agent) podLoop(ctx context.Context, sb *sandbox, policy corev1.RestartPolicy) {
	defer close(sb.done)
	var last *corev1.PodStatus
	t := time.NewTicker(checkEvery)
	defer t.Stop()
	for {
		for _, name := range sb.order {
			c := sb.containers[name]
			if !c.alive() && policy != corev1.RestartPolicyNever && len(c.procs) > 0 {
				code := int32(0)
				if st := c.procs[0].ProcessState; st != nil {
					code = int32(st.ExitCode())
				}
				c.lastExit = &corev1.ContainerStateTerminated{ExitCode: code, Reason: "Error", StartedAt: c.started, FinishedAt: metav1.Now()}
				c.kill()
				c.restarts++
				klog.InfoS("restarting container", "pod", key(sb.namespace, sb.name), "container", name, "restarts", c.restarts)
				a.startContainer(sb, c)
				continue
			}
			c.ready = c.alive() && a.readinessCheck(ctx, sb, c)
		}
		status := a.podStatus(sb)
		if last == nil || !sameStatus(last, status) {
			if err := a.writeStatus(ctx, sb, status); err != nil {
				if ctx.Err() != nil {
					return
				}
				klog.ErrorS(err, "writing pod status", "pod", key(sb.namespace, sb.name))
			} else {
				last = status
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readinessCheck: the container's readinessProbe (httpGet, tcpSocket or exec) if it has one,
// else an HTTP GET of each of its servers (a sleeper is ready while its process lives).
func (a *agent) readinessCheck(ctx context.Context, sb *sandbox, c *container) bool {
	cctx, cancel := context.WithTimeout(ctx, 900*time.Millisecond)
	defer cancel()
	if p := c.spec.ReadinessProbe; p != nil {
		switch {
		case p.HTTPGet != nil:
			port, ok := resolvePort(p.HTTPGet.Port, &c.spec)
			return ok && a.httpCheck(cctx, sb.ip, port, p.HTTPGet.Path)
		case p.TCPSocket != nil:
			port, ok := resolvePort(p.TCPSocket.Port, &c.spec)
			if !ok {
				return false
			}
			conn, err := dialIn(cctx, a.gw, "tcp", net.JoinHostPort(sb.ip.String(), fmt.Sprint(port)))
			if err == nil {
				conn.Close()
			}
			return err == nil
		case p.Exec != nil:
			return exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", sb.netns}, p.Exec.Command...)...).Run() == nil
		}
	}
	for _, port := range c.b.httpPorts {
		if !a.httpCheck(cctx, sb.ip, port, "/") {
			return false
		}
	}
	return true
}

func (a *agent) httpCheck(ctx context.Context, addr net.IP, port int32, path string) bool {
	if path == "" {
		path = "/"
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			return dialIn(ctx, a.gw, network, address)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s%s", net.JoinHostPort(addr.String(), fmt.Sprint(port)), path), nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

func resolvePort(p intstr.IntOrString, c *corev1.Container) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, p.IntVal > 0
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func (a *agent) podStatus(sb *sandbox) *corev1.PodStatus {
	allReady := true
	var statuses []corev1.ContainerStatus
	for _, name := range sb.order {
		c := sb.containers[name]
		st := corev1.ContainerStatus{
			Name: name, Image: c.spec.Image, ImageID: "causeway-lab://" + c.spec.Image,
			ContainerID: fmt.Sprintf("causeway-lab://%s/%s", sb.uid, name), Ready: c.ready, RestartCount: c.restarts,
		}
		started := c.alive()
		st.Started = &started
		if started {
			st.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
		} else {
			st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}
		}
		if c.lastExit != nil {
			st.LastTerminationState.Terminated = c.lastExit
		}
		allReady = allReady && c.ready
		statuses = append(statuses, st)
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s}
	}
	return &corev1.PodStatus{
		Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodReadyToStartContainers, true),
			cond(corev1.PodInitialized, true),
			cond(corev1.PodScheduled, true),
			cond(corev1.ContainersReady, allReady),
			cond(corev1.PodReady, allReady),
		},
		HostIP:            a.cfg.nodeIP,
		HostIPs:           []corev1.HostIP{{IP: a.cfg.nodeIP}},
		PodIP:             sb.ip.String(),
		PodIPs:            []corev1.PodIP{{IP: sb.ip.String()}},
		StartTime:         &sb.started,
		ContainerStatuses: statuses,
		QOSClass:          corev1.PodQOSBestEffort,
	}
}

func sameStatus(a, b *corev1.PodStatus) bool {
	if a.Phase != b.Phase || a.PodIP != b.PodIP || len(a.ContainerStatuses) != len(b.ContainerStatuses) {
		return false
	}
	for i := range a.Conditions {
		if a.Conditions[i].Status != b.Conditions[i].Status {
			return false
		}
	}
	for i := range a.ContainerStatuses {
		x, y := a.ContainerStatuses[i], b.ContainerStatuses[i]
		if x.Ready != y.Ready || x.RestartCount != y.RestartCount || (x.State.Running == nil) != (y.State.Running == nil) {
			return false
		}
	}
	return true
}

// writeStatus stamps transition times (kept when a condition did not change) and updates the
// pod's status subresource.
func (a *agent) writeStatus(ctx context.Context, sb *sandbox, status *corev1.PodStatus) error {
	pod, err := a.client.CoreV1().Pods(sb.namespace).Get(ctx, sb.name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if pod.UID != sb.uid {
		return nil
	}
	now := metav1.Now()
	for i := range status.Conditions {
		status.Conditions[i].LastTransitionTime = now
		for _, old := range pod.Status.Conditions {
			if old.Type == status.Conditions[i].Type && old.Status == status.Conditions[i].Status {
				status.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	pod.Status = *status
	_, err = a.client.CoreV1().Pods(sb.namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return err
}

// teardown stops a pod's containers and removes its namespace.
func (a *agent) teardown(k string) {
	a.mu.Lock()
	sb := a.sandboxes[k]
	delete(a.sandboxes, k)
	a.mu.Unlock()
	if sb == nil {
		return
	}
	sb.stop()
	<-sb.done
	for _, c := range sb.containers {
		c.kill()
	}
	a.deleteNetns(sb.netns)
	a.mu.Lock()
	a.pool.release(sb.ip)
	a.mu.Unlock()
	klog.InfoS("tore down pod", "pod", k, "netns", sb.netns)
}

func (a *agent) teardownAll() {
	a.mu.Lock()
	keys := make([]string, 0, len(a.sandboxes))
	for k := range a.sandboxes {
		keys = append(keys, k)
	}
	a.mu.Unlock()
	for _, k := range keys {
		a.teardown(k)
	}
}

// netnsExecutor runs exec commands inside a pod's network namespace.
type netnsExecutor struct {
	netns    string
	hostname string
}

func (e *netnsExecutor) ExecInContainer(ctx context.Context, _ string, _ string, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommandserver.TerminalSize, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.netns}, cmd...)...)
	c.Env = append(os.Environ(), "HOSTNAME="+e.hostname)
	if in != nil {
		c.Stdin = in
	}
	if out != nil {
		c.Stdout = out
	}
	if errw != nil && !tty {
		c.Stderr = errw
	} else if out != nil {
		c.Stderr = out
	}
	err := c.Run()
	if exitErr, ok := err.(*exec.ExitError); ok {
		return &utilexec.CodeExitError{Err: err, Code: exitErr.ExitCode()}
	}
	return err
}
