-- POST {p}initiate with a small body; no worker runs, so nothing is fetched.
wrk.method = "POST"
wrk.body = '{"files":[{"url":"http://127.0.0.1:1/x"}]}'
wrk.headers["Content-Type"] = "application/json"
