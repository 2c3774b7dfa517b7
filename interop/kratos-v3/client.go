package main

import (
	"context"
	"fmt"
	nethttp "net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-kratos/kratos/v3/transport/grpc"
	"github.com/go-kratos/kratos/v3/transport/http"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	v1 "github.com/registry-rs/interop/kratos-v3/api/helloworld/v1"
)

const caller = "go-kratos"

// oneLine keeps an error on the line it is printed on.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// call resolves discovery:///NAME with kratos' resolvers and calls SayHello over HTTP and
// gRPC every interval, one line per outcome.
func call(o *options) error {
	b, err := connect(o.registry, o.nacosDir)
	if err != nil {
		return err
	}
	defer b.close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var (
		httpClient v1.GreeterHTTPClient
		grpcClient v1.GreeterClient
	)
	// Neither is created blocking: grpc.NewClient does not wait for an instance (the
	// discovery resolver's build only waits, up to the timeout, for the watcher to be created),
	// and http.NewClient without http.WithBlock does not wait for a first list. A creation
	// that fails is tried again on the next round.
	dialHTTP := func() error {
		conn, err := http.NewClient(ctx,
			http.WithEndpoint("discovery:///"+b.httpName(o.name)),
			http.WithDiscovery(b.discovery),
			http.WithTimeout(o.timeout),
		)
		if err != nil {
			return err
		}
		httpClient = v1.NewGreeterHTTPClient(conn)
		return nil
	}
	dialGRPC := func() error {
		// kratos v3 has no DialInsecure: grpc.NewClient is insecure unless WithTLSConfig is
		// given. Nor WithPrintDiscoveryDebugLog: the resolver logs through log/slog (stderr).
		conn, err := grpc.NewClient(ctx,
			grpc.WithEndpoint("discovery:///"+b.grpcName(o.name)),
			grpc.WithDiscovery(b.discovery),
			grpc.WithTimeout(o.timeout),
		)
		if err != nil {
			return err
		}
		grpcClient = v1.NewGreeterClient(conn)
		return nil
	}

	for round := uint64(1); ; round++ {
		if httpClient == nil {
			if err := dialHTTP(); err != nil {
				fmt.Printf("[http] error: %s\n", oneLine(err))
			}
		}
		if httpClient != nil {
			// Not nil: kratos v3's Invoke takes this map as the request's header and sets
			// Accept in it (kratos v2 set nothing on a GET), then replaces it by the reply's.
			header := nethttp.Header{}
			reply, err := httpClient.SayHello(ctx, &v1.HelloRequest{Name: caller}, http.Header(&header))
			if err != nil {
				fmt.Printf("[http] error: %s\n", oneLine(err))
			} else {
				fmt.Printf("[http] SayHello %s\n", reply.Message)
				if id := header.Get("X-Served-By"); id != "" {
					fmt.Printf("[http] served-by %s\n", id)
				}
			}
		}
		if ctx.Err() != nil {
			return nil
		}

		if grpcClient == nil {
			if err := dialGRPC(); err != nil {
				fmt.Printf("[grpc] error: %s\n", oneLine(err))
			}
		}
		if grpcClient != nil {
			var header, trailer metadata.MD
			reply, err := grpcClient.SayHello(ctx, &v1.HelloRequest{Name: caller},
				ggrpc.Header(&header), ggrpc.Trailer(&trailer))
			if err != nil {
				fmt.Printf("[grpc] error: %s\n", oneLine(err))
			} else {
				fmt.Printf("[grpc] SayHello %s\n", reply.Message)
				if ids := append(header.Get("x-served-by"), trailer.Get("x-served-by")...); len(ids) > 0 {
					fmt.Printf("[grpc] served-by %s\n", ids[0])
				}
			}
		}

		if o.count > 0 && round >= o.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.interval):
		}
	}
}
