// `DELETE /api/streams/{stream_id}`: stops a stream whatever transport carries it.
import { failureFromResponse } from "./stream-error";

export async function cancelOverHttp(fetch: typeof globalThis.fetch, baseUrl: string, streamId: string): Promise<void> {
  const response = await fetch(`${baseUrl}/api/streams/${encodeURIComponent(streamId)}`, { method: "DELETE" });
  // 404: the server no longer knows the stream, so there is nothing left to stop.
  if (!response.ok && response.status !== 404) {
    throw new Error((await failureFromResponse(response)).error.message);
  }
}
