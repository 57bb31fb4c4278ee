"""`vlassist serve`: the OpenAI-compatible HTTP API over the answer service (FastAPI + uvicorn, no torch here).

models   request and response bodies (pydantic): the API's documentation, also at /openapi.json
convert  chat messages → turns and options, data: URL images, stop strings, boxes for the extension
app      create_app(service, settings, model_id, family): the routes, errors, auth, streaming, disconnects
server   serve(settings, host, port): load the answerer, one AnswerService, run uvicorn
"""
