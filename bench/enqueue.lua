wrk.method = "POST"
wrk.body = '{"code": "pass"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer test-token"
