package main

// kratos v3.0.0 keeps its registries in contrib/registry/{etcd,consul,zookeeper,nacos}, as Go
// modules github.com/go-kratos/kratos/contrib/registry/NAME/v3. The Go module proxy serves none
// of them (403 for the list, @latest, and the pseudo-versions of the v3.0.0 commit and of the
// commit that made them /v3). The same packages as .../NAME/v2 modules are served at the commit
// just before (f149714c1d54; ZooKeeper at f8b97f675b32), and there their Go sources are those
// of v3.0.0 but for the import path of kratos' registry and log packages, the wording of three
// Consul log lines, and (ZooKeeper) one line of the watcher's error path: README.md lists every
// difference. They implement kratos v2's registry interfaces; kratos v3's are the same methods
// on the same ServiceInstance struct from another package, which this adapter converts. No
// kratos source is copied here.

import (
	"context"

	v2registry "github.com/go-kratos/kratos/v2/registry"
	"github.com/go-kratos/kratos/v3/registry"
)

// v2Registry is what each contrib registry is: a kratos v2 registrar and discovery.
type v2Registry interface {
	v2registry.Registrar
	v2registry.Discovery
}

// adapted is a kratos v2 contrib registry seen as a kratos v3 registrar and discovery.
type adapted struct{ r v2Registry }

var (
	_ registry.Registrar = adapted{}
	_ registry.Discovery = adapted{}
)

func fromV2(r v2Registry) adapted { return adapted{r} }

func toV2(si *registry.ServiceInstance) *v2registry.ServiceInstance {
	if si == nil {
		return nil
	}
	return &v2registry.ServiceInstance{
		ID:        si.ID,
		Name:      si.Name,
		Version:   si.Version,
		Metadata:  si.Metadata,
		Endpoints: si.Endpoints,
	}
}

func fromV2List(list []*v2registry.ServiceInstance) []*registry.ServiceInstance {
	if list == nil {
		return nil
	}
	out := make([]*registry.ServiceInstance, 0, len(list))
	for _, si := range list {
		if si == nil {
			out = append(out, nil)
			continue
		}
		out = append(out, &registry.ServiceInstance{
			ID:        si.ID,
			Name:      si.Name,
			Version:   si.Version,
			Metadata:  si.Metadata,
			Endpoints: si.Endpoints,
		})
	}
	return out
}

func (a adapted) Register(ctx context.Context, si *registry.ServiceInstance) error {
	return a.r.Register(ctx, toV2(si))
}

func (a adapted) Deregister(ctx context.Context, si *registry.ServiceInstance) error {
	return a.r.Deregister(ctx, toV2(si))
}

func (a adapted) GetService(ctx context.Context, name string) ([]*registry.ServiceInstance, error) {
	list, err := a.r.GetService(ctx, name)
	return fromV2List(list), err
}

func (a adapted) Watch(ctx context.Context, name string) (registry.Watcher, error) {
	w, err := a.r.Watch(ctx, name)
	if err != nil {
		return nil, err
	}
	return watcher{w}, nil
}

// watcher is a kratos v2 watcher seen as a kratos v3 one.
type watcher struct{ w v2registry.Watcher }

func (w watcher) Next() ([]*registry.ServiceInstance, error) {
	list, err := w.w.Next()
	return fromV2List(list), err
}

func (w watcher) Stop() error { return w.w.Stop() }
