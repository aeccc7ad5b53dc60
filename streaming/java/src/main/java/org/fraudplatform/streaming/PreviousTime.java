package org.fraudplatform.streaming;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Time of the row before the newest one, or NULL when there is none.
 *
 * <p>{@code PREVIOUS_TIME(event_ms)} in an event-time {@code OVER} window (see
 * {@link WindowTotals}) returns, for the rows of the newest millisecond, the
 * newest earlier time, or that same millisecond when it has several rows: rows
 * of one millisecond are each other's previous rows. Unlike {@code LAG}, it
 * shares the window of the other aggregates, so it needs no operator of its own.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = PreviousTime.Times.class),
        output = @DataTypeHint("BIGINT"))
public class PreviousTime extends AggregateFunction<Long, PreviousTime.Times> {
    private static final long serialVersionUID = 1L;

    /** The two newest distinct times and the rows at the newest one. */
    public static final class Times {
        public long newestMs = Long.MIN_VALUE;
        public long previousMs = Long.MIN_VALUE;
        public long rowsAtNewest;
    }

    @Override
    public Times createAccumulator() {
        return new Times();
    }

    public void accumulate(Times times, Long eventMs) {
        if (times.rowsAtNewest > 0 && eventMs == times.newestMs) {
            times.rowsAtNewest++;
        } else {
            if (times.rowsAtNewest > 0) {
                times.previousMs = times.newestMs;
            }
            times.newestMs = eventMs;
            times.rowsAtNewest = 1;
        }
    }

    @Override
    public Long getValue(Times times) {
        if (times.rowsAtNewest > 1) {
            return times.newestMs;
        }
        return times.previousMs == Long.MIN_VALUE ? null : times.previousMs;
    }
}
