package charttest

import (
	"errors"
	"fmt"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/applyconfigurations"
	"k8s.io/client-go/kubernetes/scheme"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Object is one decoded, validated manifest.
type Object struct {
	Doc
	GVK schema.GroupVersionKind
	// Obj is the typed object: *appsv1.Deployment, *corev1.ConfigMap, … or
	// *monitoringv1.ServiceMonitor, *monitoringv1.PrometheusRule.
	Obj runtime.Object
}

// monitoring holds the Prometheus Operator kinds the chart renders: they are
// custom resources, outside client-go's scheme.
var monitoring = map[string]func() runtime.Object{
	"ServiceMonitor": func() runtime.Object { return &monitoringv1.ServiceMonitor{} },
	"PrometheusRule": func() runtime.Object { return &monitoringv1.PrometheusRule{} },
}

// converter checks built-in kinds against the API's structural schema (the
// OpenAPI models client-go's apply configurations are generated from).
var converter managedfields.TypeConverter = applyconfigurations.NewTypeConverter(scheme.Scheme)

// Decode decodes and validates one manifest: strictly into its Go type
// (unknown and duplicate fields refused), against the API's structural schema
// for built-in kinds, and with apimachinery's validation of its metadata.
func Decode(d Doc) (Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(d.Body, &tm); err != nil {
		return Object{}, fmt.Errorf("%s: %w", d.Source, err)
	}
	gvk := tm.GroupVersionKind()
	o := Object{Doc: d, GVK: gvk}
	var (
		obj     runtime.Object
		builtin bool
	)
	switch {
	case gvk.GroupVersion() == monitoringv1.SchemeGroupVersion && monitoring[gvk.Kind] != nil:
		obj = monitoring[gvk.Kind]()
	default:
		var err error
		obj, err = scheme.Scheme.New(gvk)
		if err != nil {
			return o, fmt.Errorf("%s: %s is not a Kubernetes kind this test knows: %w", d.Source, gvk, err)
		}
		builtin = true
	}
	if err := strictDecode(d.Body, obj); err != nil {
		return o, fmt.Errorf("%s: %s: %w", d.Source, gvk.Kind, err)
	}
	o.Obj = obj
	if builtin {
		if _, err := converter.ObjectToTyped(obj); err != nil {
			return o, fmt.Errorf("%s: %s against the API schema: %w", d.Source, gvk.Kind, err)
		}
	}
	acc, ok := obj.(metav1.ObjectMetaAccessor)
	if !ok {
		return o, fmt.Errorf("%s: %s has no metadata", d.Source, gvk.Kind)
	}
	if errs := validateMeta(acc.GetObjectMeta(), gvk.Kind); len(errs) > 0 {
		return o, fmt.Errorf("%s: %s: %w", d.Source, gvk.Kind, errs.ToAggregate())
	}
	return o, nil
}

// validateMeta applies the API server's rules for names, namespaces,
// labels and annotations.
func validateMeta(m metav1.Object, kind string) field.ErrorList {
	p := field.NewPath("metadata")
	var errs field.ErrorList
	name := apivalidation.NameIsDNSSubdomain
	if kind == "Service" {
		name = apivalidation.NameIsDNS1035Label
	}
	if m.GetName() == "" {
		errs = append(errs, field.Required(p.Child("name"), ""))
	}
	for _, msg := range name(m.GetName(), false) {
		errs = append(errs, field.Invalid(p.Child("name"), m.GetName(), msg))
	}
	for _, msg := range apivalidation.ValidateNamespaceName(m.GetNamespace(), false) {
		errs = append(errs, field.Invalid(p.Child("namespace"), m.GetNamespace(), msg))
	}
	errs = append(errs, metav1validation.ValidateLabels(m.GetLabels(), p.Child("labels"))...)
	errs = append(errs, apivalidation.ValidateAnnotations(m.GetAnnotations(), p.Child("annotations"))...)
	return errs
}

// DecodeAll decodes and validates every manifest of a rendering; the names
// of objects of one kind must be distinct.
func DecodeAll(manifest string) ([]Object, error) {
	var (
		out  []Object
		errs []error
		seen = map[string]bool{}
	)
	for _, d := range Split(manifest) {
		o, err := Decode(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		id := o.GVK.Kind + "/" + o.Obj.(metav1.ObjectMetaAccessor).GetObjectMeta().GetName()
		if seen[id] {
			errs = append(errs, fmt.Errorf("%s: %s is rendered twice", d.Source, id))
		}
		seen[id] = true
		out = append(out, o)
	}
	return out, errors.Join(errs...)
}

// strictDecode decodes YAML into obj as the API server decodes a request in
// strict mode (sigs.k8s.io/json, which apimachinery uses): field names match
// case-sensitively (encoding/json would take readOnlyRootFileSystem for
// readOnlyRootFilesystem), and an unknown or duplicated field is an error.
func strictDecode(body []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(body)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(js, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// envRefs returns the ${NAME} references of a refresher configuration.
func envRefs(cfg string) []string {
	var out []string
	for {
		i := strings.Index(cfg, "${")
		if i < 0 {
			return out
		}
		cfg = cfg[i+2:]
		j := strings.IndexByte(cfg, '}')
		if j < 0 {
			return out
		}
		out = append(out, cfg[:j])
		cfg = cfg[j+1:]
	}
}
