"""The OpenAPI document says what the gateway answers (schemathesis checks it in test_fuzz)."""

from __future__ import annotations

from gateway.finetune.files import USER_PURPOSES

ERROR_REF = "#/components/schemas/ErrorResponse"


async def document(gateway) -> dict:
    response = await gateway.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_no_422_and_every_error_is_openai_shaped(gateway):
    doc = await document(gateway)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "422" not in statuses, (method, path)
            for status in statuses - {"200", "201"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
                assert ERROR_REF in refs, (method, path, status)
            if path != "/health":
                assert {"401", "503"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413"} <= statuses, (method, path)


async def test_inference_routes_document_their_limits_and_streams(gateway):
    paths = (await document(gateway))["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        responses = paths[path]["post"]["responses"]
        assert {"400", "404", "429", "503"} <= set(responses)
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "200" not in paths["/v1/responses/{response_id}"]["get"]["responses"]  # never stored


async def test_upload_schemas_say_what_is_accepted(gateway):
    paths = (await document(gateway))["paths"]

    def multipart(path: str) -> dict:
        return paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]

    files = multipart("/v1/files")
    assert files["required"] == ["file", "purpose"]
    assert set(files["properties"]["purpose"]["enum"]) == USER_PURPOSES
    assert files["properties"]["file"] == {"type": "string", "format": "binary"}
    fine_tunes = multipart("/v1/fine_tunes")
    assert fine_tunes["required"] == ["file", "model"]
    bases, continued = fine_tunes["properties"]["model"]["anyOf"]
    assert bases["enum"] == ["base"]  # the bases it can train, or an adapter to continue
    assert continued["pattern"] == "^ft:"
    rank = fine_tunes["properties"]["lora_rank"]["anyOf"][0]
    assert rank["maximum"] == gateway.app.state.settings.vllm_max_lora_rank
    adapters = multipart("/v1/adapters")
    assert {"adapter_model", "adapter_config", "base", "suffix"} == set(adapters["required"])
