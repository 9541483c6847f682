"""The analytic cost model: model shapes, FLOPs and bytes, pricing of a batch's rows, hardware."""
