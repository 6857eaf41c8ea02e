"""Logs through the OpenTelemetry Python SDK's OTLP/HTTP exporter (protobuf), as any Python
service would send them: one warning inside a span, one info line outside it.

Usage: send_logs.py <logs endpoint URL>. Prints the span's trace and span ids.
"""

import logging
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

resource = Resource.create({"service.name": "pyshop", "service.instance.id": "py-1"})
trace.set_tracer_provider(TracerProvider(resource=resource))
provider = LoggerProvider(resource=resource)
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=sys.argv[1])))
logger = logging.getLogger("pyshop.orders")
logger.setLevel(logging.DEBUG)
logger.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))

with trace.get_tracer("pyshop").start_as_current_span("place order") as span:
    logger.warning("stock is low for %s", "tea", extra={"product": 42})
    context = span.get_span_context()
logger.info("order accepted")
# Flushes the batch; an export the sink refused is logged by the SDK on stderr.
provider.shutdown()
print(format(context.trace_id, "032x"), format(context.span_id, "016x"))
