package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
)

// Prometheus is a meter provider whose metrics are served in the Prometheus
// text format by Handler. Each Prometheus has its own registry (with the Go
// runtime and process collectors), so several can live in one process.
type Prometheus struct {
	provider *sdkmetric.MeterProvider
	handler  http.Handler
}

// NewPrometheus returns a meter provider exporting to a fresh Prometheus
// registry. The resource (service name, version and instance) appears as the
// target_info metric; instrument names are translated the Prometheus way
// (tokenbus.refreshes → tokenbus_refreshes_total, unit s → _seconds).
func NewPrometheus(service, version, instance string) (*Prometheus, error) {
	reg := prometheus.NewRegistry()
	if err := errors.Join(
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	); err != nil {
		return nil, fmt.Errorf("telemetry: prometheus collectors: %w", err)
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	res, err := newResource(service, version, instance)
	if err != nil {
		return nil, err
	}
	return &Prometheus{
		provider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res)),
		handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
	}, nil
}

// MeterProvider returns the provider instruments are created on.
func (p *Prometheus) MeterProvider() metric.MeterProvider { return p.provider }

// Handler serves the metrics (mount it on /metrics).
func (p *Prometheus) Handler() http.Handler { return p.handler }

// Shutdown stops the meter provider.
func (p *Prometheus) Shutdown(ctx context.Context) error { return p.provider.Shutdown(ctx) }

// newResource describes this process to exporters.
func newResource(service, version, instance string) (*resource.Resource, error) {
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL,
		semconv.ServiceName(service), semconv.ServiceVersion(version), semconv.ServiceInstanceID(instance)))
	if err != nil && !errors.Is(err, resource.ErrSchemaURLConflict) {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}
