"""An application instrumented with the OpenTelemetry SDK: sends spans,
metrics and logs over OTLP (gRPC or HTTP/protobuf) to the endpoint given,
then flushes and exits. Prints its pid first, so the test can check the
process resource the agent adds.

usage: otlp_sender.py grpc|http ENDPOINT TENANT
"""

import logging
import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

protocol, endpoint, tenant = sys.argv[1], sys.argv[2], sys.argv[3]
print(os.getpid(), flush=True)

if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from grpc import Compression

    def exporter(cls, _path):
        return cls(endpoint=endpoint, insecure=True, compression=Compression.Gzip)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http import Compression

    def exporter(cls, path):
        return cls(endpoint=endpoint + path, compression=Compression.Gzip)

resource = Resource.create({"service.name": "checkout", "tenant": tenant})

tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(
    BatchSpanProcessor(exporter(OTLPSpanExporter, "/v1/traces"))
)
tracer = tracer_provider.get_tracer("checkout.app")
with tracer.start_as_current_span("charge") as span:
    span.set_attribute("card", "4111111111111111")
    span.set_attribute("password", "hunter2")
    span.set_attribute("url.path", "/charge")
with tracer.start_as_current_span("health") as span:
    span.set_attribute("url.path", "/healthz")

reader = PeriodicExportingMetricReader(
    exporter(OTLPMetricExporter, "/v1/metrics"), export_interval_millis=60_000
)
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
orders = meter_provider.get_meter("checkout.app").create_counter("orders")
orders.add(3, {"http.method": "POST", "customer": "c-42", "card": "4111111111111111"})

logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(
    BatchLogRecordProcessor(exporter(OTLPLogExporter, "/v1/logs"))
)
log = logging.getLogger("checkout")
log.propagate = False
log.addHandler(LoggingHandler(logger_provider=logger_provider))
log.setLevel(logging.INFO)
log.warning("payment declined: " + "x" * 200)

ok = tracer_provider.force_flush(10_000)
ok = meter_provider.force_flush(10_000) and ok
ok = logger_provider.force_flush(10_000) and ok
tracer_provider.shutdown()
meter_provider.shutdown()
logger_provider.shutdown()
sys.exit(0 if ok else 1)
