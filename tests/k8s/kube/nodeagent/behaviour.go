package main

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// What a container runs, decided from its image by the table below. No image is pulled: each
// known image is replaced by a process that does what the lab needs of it, honestly named here.
//
//	image (repository's last path element)   what runs in the pod's network namespace
//	agnhost serve-hostname [--port N]          HTTP server answering the pod's name, port N (9376)
//	agnhost netexec [--http-port N]            HTTP server answering the pod's name, port N (8080)
//	agnhost pause, pause                       `sleep infinity`
//	nginx, httpd, http-echo, echoserver        HTTP server answering the pod's name on each TCP
//	                                           containerPort (80 if none)
//	busybox, alpine, debian, ubuntu, curl,     `sleep infinity` (the container's own command is
//	netshoot, agnhost (other subcommands)      NOT run; exec into it runs host binaries)
//	anything else                              HTTP server answering the pod's name on each TCP
//	                                           containerPort; with none, `sleep infinity`
//
// `kubectl exec` always runs the host's binaries (curl, getent, nslookup...) inside the pod's
// network namespace: there is no container filesystem.
type behaviour struct {
	// httpPorts: TCP ports with a server answering the pod's name (empty: a sleeper).
	httpPorts []int32
	what      string
}

func behaviourFor(c *corev1.Container) behaviour {
	name := imageName(c.Image)
	args := append(append([]string{}, c.Command...), c.Args...)
	switch name {
	case "agnhost":
		sub, rest := "", []string{}
		for i, a := range args {
			if !strings.HasPrefix(a, "-") && !strings.Contains(a, "/") {
				sub, rest = a, args[i+1:]
				break
			}
		}
		switch sub {
		case "serve-hostname":
			p := flagPort(rest, "port", 9376)
			return behaviour{httpPorts: []int32{p}, what: fmt.Sprintf("agnhost serve-hostname: HTTP hostname server on %d", p)}
		case "netexec":
			p := flagPort(rest, "http-port", 8080)
			return behaviour{httpPorts: []int32{p}, what: fmt.Sprintf("agnhost netexec: HTTP hostname server on %d", p)}
		default:
			return behaviour{what: fmt.Sprintf("agnhost %s: sleep infinity", sub)}
		}
	case "pause", "busybox", "alpine", "debian", "ubuntu", "curl", "netshoot":
		return behaviour{what: name + ": sleep infinity"}
	case "nginx", "httpd", "http-echo", "echoserver":
		ports := tcpPorts(c)
		if len(ports) == 0 {
			ports = []int32{80}
		}
		return behaviour{httpPorts: ports, what: fmt.Sprintf("%s: HTTP hostname server on %v", name, ports)}
	default:
		ports := tcpPorts(c)
		if len(ports) == 0 {
			return behaviour{what: "unknown image " + name + " without ports: sleep infinity"}
		}
		return behaviour{httpPorts: ports, what: fmt.Sprintf("unknown image %s: HTTP hostname server on %v", name, ports)}
	}
}

// imageName is the last path element of an image reference without tag or digest:
// registry.k8s.io/e2e-test-images/agnhost:2.53 -> agnhost.
func imageName(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, "/"); i >= 0 {
		image = image[i+1:]
	}
	if i := strings.Index(image, ":"); i >= 0 {
		image = image[:i]
	}
	return image
}

// flagPort reads --NAME=N or --NAME N from args.
func flagPort(args []string, name string, def int32) int32 {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			if p, err := strconv.ParseInt(v, 10, 32); err == nil && p > 0 && p < 65536 {
				return int32(p)
			}
		}
		if a == name && i+1 < len(args) {
			if p, err := strconv.ParseInt(args[i+1], 10, 32); err == nil && p > 0 && p < 65536 {
				return int32(p)
			}
		}
	}
	return def
}

func tcpPorts(c *corev1.Container) []int32 {
	var ports []int32
	for _, p := range c.Ports {
		if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
			ports = append(ports, p.ContainerPort)
		}
	}
	return ports
}
