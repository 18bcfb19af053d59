-- wrk script of scripts/bench: async POST /run of one function
-- (BENCH_FUNCTION_ID, BENCH_KEY from the environment). Non-2xx answers
-- are counted by wrk and make the harness fail the measurement.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY")
wrk.headers["x-async"] = "true"
wrk.body = '{"functionId":"' .. os.getenv("BENCH_FUNCTION_ID") .. '","inputData":{"n":1}}'
