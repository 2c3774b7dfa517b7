package main

import (
	"context"
	"fmt"

	"github.com/go-kratos/kratos/v3"
	"github.com/go-kratos/kratos/v3/middleware"
	"github.com/go-kratos/kratos/v3/middleware/recovery"
	"github.com/go-kratos/kratos/v3/transport"
	"github.com/go-kratos/kratos/v3/transport/grpc"
	"github.com/go-kratos/kratos/v3/transport/http"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	v1 "github.com/registry-rs/interop/kratos-v3/api/helloworld/v1"
)

// greeter answers as registry-rs' Rust helloworld does: "welcome NAME!".
type greeter struct {
	v1.UnimplementedGreeterServer
}

func (greeter) SayHello(_ context.Context, in *v1.HelloRequest) (*v1.HelloReply, error) {
	return &v1.HelloReply{Message: fmt.Sprintf("welcome %s!", in.Name)}, nil
}

// servedBy tells which server answered: the HTTP response header X-Served-By, and gRPC
// header and trailer metadata x-served-by (kratos sends the reply header as gRPC header).
func servedBy(id string) middleware.Middleware {
	return func(next middleware.Handler) middleware.Handler {
		return func(ctx context.Context, req interface{}) (interface{}, error) {
			if tr, ok := transport.FromServerContext(ctx); ok {
				tr.ReplyHeader().Set("x-served-by", id)
				if tr.Kind() == transport.KindGRPC {
					_ = ggrpc.SetTrailer(ctx, metadata.Pairs("x-served-by", id))
				}
			}
			return next(ctx, req)
		}
	}
}

func serve(o *options) error {
	b, err := connect(o.registry, o.nacosDir)
	if err != nil {
		return err
	}
	defer b.close()

	ms := []middleware.Middleware{recovery.Recovery()}
	if o.id != "" {
		ms = append(ms, servedBy(o.id))
	}
	// 127.0.0.1:0: a free loopback port each; kratos takes the endpoint from the listener
	// (internal/host.Extract keeps a host that is not 0.0.0.0 or ::).
	httpSrv := http.NewServer(http.Address("127.0.0.1:0"), http.Middleware(ms...))
	grpcSrv := grpc.NewServer(grpc.Address("127.0.0.1:0"), grpc.Middleware(ms...))
	v1.RegisterGreeterServer(grpcSrv, greeter{})
	v1.RegisterGreeterHTTPServer(httpSrv, greeter{})

	opts := []kratos.Option{
		kratos.Name(o.name),
		kratos.Version(o.version),
		kratos.Server(httpSrv, grpcSrv),
		kratos.Registrar(b.registrar),
		kratos.AfterStart(func(context.Context) error {
			he, err := httpSrv.Endpoint()
			if err != nil {
				return err
			}
			ge, err := grpcSrv.Endpoint()
			if err != nil {
				return err
			}
			fmt.Printf("serving %s on http://%s and grpc://%s\n", o.name, he.Host, ge.Host)
			return nil
		}),
	}
	if o.id != "" {
		opts = append(opts, kratos.ID(o.id))
	}
	if o.metadata != nil {
		opts = append(opts, kratos.Metadata(o.metadata))
	}
	// App.Run registers once both servers have started, and on SIGTERM/SIGINT/SIGQUIT calls
	// App.Stop, which deregisters before stopping the servers.
	app := kratos.New(opts...)
	if err := app.Run(); err != nil {
		return err
	}
	fmt.Println("stopped")
	return nil
}
