// The least a correct TarsReplica controller does, written with controller-runtime: the
// anchor bench/operator_scale.py measures tars-operator against.
//
// For every TarsReplica in one namespace it server-side applies the replica's Deployment
// and Service and writes its status with observedGeneration. The children and the status
// are read from --children, written by the bench with the operator's own pure functions,
// so all controllers send the same objects; this program adds the owner reference (the
// replica's uid is known only here) and the observedGeneration.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

const fieldOwner = client.FieldOwner("tars-operator")

var tarsReplica = schema.GroupVersionKind{Group: "tars.dev", Version: "v1alpha1", Kind: "TarsReplica"}

// What the bench wrote for one replica: its children without owner, and its status.
type children struct {
	Deployment map[string]any `json:"deployment"`
	Service    map[string]any `json:"service"`
	Status     map[string]any `json:"status"`
}

type reconciler struct {
	client   client.Client
	children map[string]children
}

func (r *reconciler) Reconcile(ctx context.Context, request ctrl.Request) (ctrl.Result, error) {
	replica := &unstructured.Unstructured{}
	replica.SetGroupVersionKind(tarsReplica)
	if err := r.client.Get(ctx, request.NamespacedName, replica); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if replica.GetDeletionTimestamp() != nil {
		return ctrl.Result{}, nil
	}
	wanted, known := r.children[replica.GetName()]
	if !known {
		return ctrl.Result{}, nil
	}
	owner := map[string]any{
		"apiVersion":         replica.GetAPIVersion(),
		"kind":               replica.GetKind(),
		"name":               replica.GetName(),
		"uid":                string(replica.GetUID()),
		"controller":         true,
		"blockOwnerDeletion": true,
	}
	for _, manifest := range []map[string]any{wanted.Deployment, wanted.Service} {
		child := &unstructured.Unstructured{Object: manifest}
		child = child.DeepCopy()
		if err := unstructured.SetNestedSlice(child.Object, []any{owner}, "metadata", "ownerReferences"); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(child), fieldOwner, client.ForceOwnership); err != nil {
			return ctrl.Result{}, err
		}
	}
	observed, _, _ := unstructured.NestedInt64(replica.Object, "status", "observedGeneration")
	if observed == replica.GetGeneration() {
		return ctrl.Result{}, nil
	}
	status := map[string]any{}
	for key, value := range wanted.Status {
		status[key] = value
	}
	status["observedGeneration"] = replica.GetGeneration()
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.client.Status().Patch(ctx, replica, client.RawPatch(types.MergePatchType, patch), fieldOwner)
}

func main() {
	namespace := flag.String("namespace", "", "namespace to watch")
	childrenFile := flag.String("children", "", "JSON: replica name -> deployment, service, status")
	workers := flag.Int("workers", 16, "concurrent reconciles")
	metricsAddress := flag.String("metrics-bind-address", "", "address of /metrics")
	probeAddress := flag.String("health-probe-bind-address", "", "address of /readyz")
	flag.Parse()
	ctrl.SetLogger(zap.New())
	if err := run(*namespace, *childrenFile, *workers, *metricsAddress, *probeAddress); err != nil {
		fmt.Fprintf(os.Stderr, "controller-runtime-bench: %v\n", err)
		os.Exit(1)
	}
}

func run(namespace, childrenFile string, workers int, metricsAddress, probeAddress string) error {
	data, err := os.ReadFile(childrenFile)
	if err != nil {
		return err
	}
	wanted := map[string]children{}
	if err := json.Unmarshal(data, &wanted); err != nil {
		return fmt.Errorf("%s: %w", childrenFile, err)
	}
	// controller-runtime's own --kubeconfig flag.
	config, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	manager, err := ctrl.NewManager(config, ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}},
		Metrics:                metricsserver.Options{BindAddress: metricsAddress},
		HealthProbeBindAddress: probeAddress,
	})
	if err != nil {
		return err
	}
	// Ready once the informer has listed the namespace: the bench starts creating then.
	if err := manager.AddReadyzCheck("informers", func(request *http.Request) error {
		if !manager.GetCache().WaitForCacheSync(request.Context()) {
			return fmt.Errorf("informers not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	replica := &unstructured.Unstructured{}
	replica.SetGroupVersionKind(tarsReplica)
	err = ctrl.NewControllerManagedBy(manager).
		Named("tarsreplica").
		// Its own status patches are no reason to reconcile again.
		For(replica, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(&reconciler{client: manager.GetClient(), children: wanted})
	if err != nil {
		return err
	}
	return manager.Start(ctrl.SetupSignalHandler())
}
