package main

import (
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	// kratos' contrib registries as Go modules .../contrib/registry/NAME/v2: their /v3 modules
	// are not served by the Go module proxy; see README.md and v2registry.go.
	"github.com/go-kratos/kratos/contrib/registry/consul/v2"
	"github.com/go-kratos/kratos/contrib/registry/etcd/v2"
	"github.com/go-kratos/kratos/contrib/registry/nacos/v2"
	"github.com/go-kratos/kratos/contrib/registry/zookeeper/v2"
	"github.com/go-kratos/kratos/v3/registry"
	"github.com/go-zookeeper/zk"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/nacos-group/nacos-sdk-go/v2/clients"
	"github.com/nacos-group/nacos-sdk-go/v2/common/constant"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// backend is one registry, built with kratos' contrib package for it (behind the v2 -> v3
// adapter of v2registry.go).
type backend struct {
	registrar registry.Registrar
	discovery registry.Discovery
	// names kratos discovers a service's HTTP and gRPC endpoints under: NAME, except on
	// Nacos, where kratos registers one Nacos service per scheme (NAME.http, NAME.grpc) and
	// finds nothing under plain NAME.
	httpName, grpcName func(string) string
	close              func()
}

func same(name string) string { return name }

// kratosDefaultRoot is the etcd namespace and ZooKeeper root path kratos uses by default.
const kratosDefaultRoot = "/microservices"

func rootOf(u *url.URL) string {
	p := strings.TrimRight(u.Path, "/")
	if p == "" {
		return kratosDefaultRoot
	}
	return p
}

func connect(raw, nacosDir string) (*backend, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("registry URL %q: %w", raw, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("registry URL %q: no host:port", raw)
	}
	switch u.Scheme {
	case "etcd":
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{u.Host},
			DialTimeout: 5 * time.Second,
		})
		if err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
		r := fromV2(etcd.New(cli, etcd.Namespace(rootOf(u))))
		return &backend{r, r, same, same, func() { _ = cli.Close() }}, nil
	case "consul":
		cli, err := consulapi.NewClient(&consulapi.Config{Address: u.Host})
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		r := fromV2(consul.New(cli))
		return &backend{r, r, same, same, func() {}}, nil
	case "zk", "zookeeper":
		conn, _, err := zk.Connect([]string{u.Host}, 10*time.Second,
			zk.WithLogger(log.New(os.Stderr, "zk: ", log.LstdFlags)))
		if err != nil {
			return nil, fmt.Errorf("zookeeper: %w", err)
		}
		r := fromV2(zookeeper.New(conn, zookeeper.WithRootPath(rootOf(u))))
		return &backend{r, r, same, same, conn.Close}, nil
	case "nacos":
		return connectNacos(u, nacosDir)
	default:
		return nil, fmt.Errorf("registry URL %q: unknown scheme %q (want etcd, consul, zk or nacos)", raw, u.Scheme)
	}
}

func connectNacos(u *url.URL, dir string) (*backend, error) {
	host, portText, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("nacos: %w", err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("nacos: port %q: %w", portText, err)
	}
	q := u.Query()
	namespace := q.Get("namespace")
	if namespace == "public" {
		namespace = "" // the SDK's spelling of the public namespace
	}
	cleanup := func() {}
	if dir == "" {
		dir, err = os.MkdirTemp("", "kratos-helloworld-nacos-")
		if err != nil {
			return nil, fmt.Errorf("nacos: %w", err)
		}
		tmp := dir
		cleanup = func() { _ = os.RemoveAll(tmp) }
	}
	cc := constant.ClientConfig{
		NamespaceId:         namespace,
		TimeoutMs:           5000,
		NotLoadCacheAtStart: true,
		// nacos-sdk-go's "push empty protection" is the default UpdateCacheWhenEmpty=false:
		// an empty list from the server is not taken. Take it, so that an empty list is reported.
		// (kratos v3's Nacos registry uses nacos-sdk-go/v2: gRPC to the server's port + 1000.)
		UpdateCacheWhenEmpty: true,
		CacheDir:             dir + "/cache",
		LogDir:               dir + "/log",
		LogLevel:             "warn",
	}
	cli, err := clients.NewNamingClient(vo.NacosClientParam{
		ClientConfig:  &cc,
		ServerConfigs: []constant.ServerConfig{*constant.NewServerConfig(host, port)},
	})
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("nacos: %w", err)
	}
	var opts []nacos.Option
	if g := q.Get("group"); g != "" {
		opts = append(opts, nacos.WithGroup(g))
	}
	if c := q.Get("cluster"); c != "" {
		opts = append(opts, nacos.WithCluster(c))
	}
	r := fromV2(nacos.New(cli, opts...))
	return &backend{
		registrar: r,
		discovery: r,
		httpName:  func(n string) string { return n + ".http" },
		grpcName:  func(n string) string { return n + ".grpc" },
		close:     cleanup,
	}, nil
}
