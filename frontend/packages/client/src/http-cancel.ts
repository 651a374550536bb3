// `DELETE /api/streams/{stream_id}`: stops a stream whatever transport carries it.
import type { ApiHttp } from "./api-http.js";
import { failureFromResponse } from "./stream-error.js";

export async function cancelOverHttp(http: ApiHttp, streamId: string): Promise<void> {
  const response = await http.request(`/api/streams/${encodeURIComponent(streamId)}`, { method: "DELETE" });
  // 404: the server no longer knows the stream, so there is nothing left to stop.
  if (!response.ok && response.status !== 404) {
    throw new Error((await failureFromResponse(response)).error.message);
  }
}
