// Command kratos-helloworld (built as kratos-helloworld-v3) is the go-kratos helloworld of
// interop/kratos on kratos v3.0.0 (a Greeter served over HTTP and gRPC, registered in etcd,
// Consul, ZooKeeper or Nacos with kratos' own contrib registries: those published as the /v2
// modules, whose sources are v3.0.0's; see README.md), for interop tests with registry-rs. Same
// flags and output as the v2 program:
//
//	kratos-helloworld server --registry URL [--name NAME] [--id ID] [--version V] [--metadata K=V]...
//	kratos-helloworld client --registry URL [--name NAME] [--interval 200ms] [--count N] [--timeout 2s]
//
// URL is one of
//
//	etcd://127.0.0.1:2379/NAMESPACE           (etcd.Namespace; default /microservices)
//	consul://127.0.0.1:8500
//	zk://127.0.0.1:2181/ROOT                  (zookeeper.WithRootPath; default /microservices)
//	nacos://127.0.0.1:8848?namespace=NS&group=G&cluster=C   (defaults: public, DEFAULT_GROUP, DEFAULT)
//
// Everything else is what kratos' examples do: kratos.New with kratos.Registrar, http.NewServer
// and grpc.NewServer, and clients through discovery:///NAME.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

const usage = `usage:
  kratos-helloworld server --registry URL [--name NAME] [--id ID] [--version V] [--metadata K=V]... [--nacos-dir DIR]
  kratos-helloworld client --registry URL [--name NAME] [--interval 200ms] [--count N] [--timeout 2s] [--nacos-dir DIR]
`

// options are the flags of both subcommands; flags may stand before or after the subcommand.
type options struct {
	registry string
	name     string
	nacosDir string
	// server
	id       string
	version  string
	metadata metadataFlag
	// client
	interval time.Duration
	count    uint64
	timeout  time.Duration
}

type metadataFlag map[string]string

func (m *metadataFlag) String() string { return fmt.Sprint(map[string]string(*m)) }

func (m *metadataFlag) Set(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", kv)
	}
	if *m == nil {
		*m = metadataFlag{}
	}
	(*m)[k] = v
	return nil
}

func flags(name string, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	fs.StringVar(&o.registry, "registry", o.registry, "registry URL")
	fs.StringVar(&o.name, "name", o.name, "service name")
	fs.StringVar(&o.nacosDir, "nacos-dir", o.nacosDir, "Nacos SDK cache and log directory (default: a new one under the temp dir, removed at exit)")
	fs.StringVar(&o.id, "id", o.id, "server: the kratos instance ID (kratos.ID), also sent as X-Served-By / x-served-by (default: kratos' UUID, no header)")
	fs.StringVar(&o.version, "version", o.version, "server: kratos.Version")
	fs.Var(&o.metadata, "metadata", "server: kratos.Metadata entry KEY=VALUE (repeatable; none: metadata is null)")
	fs.DurationVar(&o.interval, "interval", o.interval, "client: time between rounds of calls")
	fs.Uint64Var(&o.count, "count", o.count, "client: stop after this many rounds (0: forever)")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "client: per-call timeout (grpc.WithTimeout, http.WithTimeout)")
	return fs
}

func main() {
	o := options{name: "helloworld", interval: time.Second, timeout: 2 * time.Second}
	args := os.Args[1:]
	// Flags before the subcommand.
	pre := flags("kratos-helloworld", &o)
	if err := pre.Parse(args); err != nil {
		os.Exit(2)
	}
	args = pre.Args()
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd := args[0]
	fs := flags(cmd, &o)
	if err := fs.Parse(args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kratos-helloworld: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	if o.registry == "" {
		fmt.Fprintln(os.Stderr, "kratos-helloworld: --registry URL is required")
		os.Exit(2)
	}
	var err error
	switch cmd {
	case "server":
		err = serve(&o)
	case "client":
		err = call(&o)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kratos-helloworld: %v\n", err)
		os.Exit(1)
	}
}
